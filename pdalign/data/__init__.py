"""Preference data: load, validate, apply the chat template, mask, truncate, collate.

The path from a file to a training batch is four plain steps, one function each:

    rows, skipped = load_preference_rows(source)            # validated PreferenceRow list
    train, heldout = split_heldout(rows, 0.1, seed=0)       # optional, deterministic
    features, skipped = tokenize_rows(tokenizer, train, max_length=512, max_prompt_length=256)
    batch = collate(features[:8], tokenizer.pad_token_id)  # one (2B, T) forward pass

Unpaired rows take the same steps (`load_unpaired_rows`, `tokenize_rows`, `collate`); their
batch is also (2B, T): B (prompt, completion) rows, then the B mismatched rows KTO estimates
its reference point from.

Modules: `pdalign.data.readers` (sources and their errors), `pdalign.data.preference` (rows
and their validation, the held-out split), `pdalign.data.features` (tokens, collation and
`build_dataset`, which runs the first three for the trainer). Everything up to `collate` is plain
Python (no torch), so bad data is caught before any model loads.

Sources
    A ``.jsonl`` / ``.json`` / ``.parquet`` file, ``builtin:<name>`` for a set shipped in
    this folder (``builtin:quickstart``), a ``datasets.Dataset`` (or ``DatasetDict``
    plus ``split``), or any other string, which goes to ``datasets.load_dataset(name,
    split=split)`` (a hub id or a local data directory). A ``.json`` file may hold one JSON
    array of objects or, as ``datasets.Dataset.to_json`` writes it, one object per line.

Row formats
    Each row has ``prompt``, ``chosen`` and ``rejected`` (renamed with ``columns``, e.g.
    ``{"prompt": "question"}``). Each value is either a plain string or a list of
    ``{"role", "content"}`` messages (TRL's conversational format: the prompt's messages,
    then the assistant message(s) of each answer). A plain prompt is one user message and a
    plain answer one assistant message.

    Unpaired feedback (for KTO; `load_unpaired_rows`) has ``prompt``, ``completion`` and
    ``label`` (true = desirable, false = undesirable), TRL's unpaired preference format; the
    same value rules apply to ``completion`` as to an answer, and a source must hold both
    labels. `unpair_rows` turns pairs into such rows (chosen -> desirable, rejected ->
    undesirable), TRL's ``unpair_preference_dataset``: ``build_dataset(unpair=True)``.

Tokens
    prompt tokens = the chat template of the prompt messages with ``add_generation_prompt``;
    response tokens = the rest of the templated full conversation, so a response ends with
    the template's end-of-turn (``<|im_end|>`` for SmolLM2). Whitespace-only tokens that a
    template emits after the end-of-turn (SmolLM2 writes ``<|im_end|>\\n``) are dropped:
    generation stops at end-of-turn, so the policy never produces them and they would only
    add noise to sequence log-probs. Two fallbacks, both documented decisions:
    - when the templated conversation does not start with the templated prompt's tokens (a
      template that rewrites earlier turns), the response is its text + eos, tokenized on
      its own, and the feature is flagged ``template_fallback``;
    - a tokenizer without a chat template takes the raw prompt string (with the tokenizer's
      own special tokens, e.g. BOS) and response text + eos, joined with no separator; end
      such prompts with your own separator. Message lists then are an error.

Labels
    ``labels`` align with ``input_ids`` (not shifted; the log-prob code shifts by one) and
    are -100 on every prompt token and on padding, so only response tokens are scored.

Truncation policy (``max_length`` counts prompt + response tokens; ``data.on_overlong``)
    1. A prompt longer than ``max_prompt_length`` keeps its END (left truncation): the last
       user turn and the generation header matter more than an old system message.
    2. Each response keeps its START and is cut to fit ``max_length``; a cut response loses
       its end-of-turn token.
    3. A prompt that (after step 1) leaves no room for one response token is an error.
    Chosen and rejected always share the identical prompt tokens. Steps 1 and 2 are the
    default, ``on_overlong="truncate"``, as in TRL (real sets carry a few long prompts that
    are not worth a crash), and how many prompts and responses each data set had cut, and
    from what length, is logged at start; ``on_overlong="error"`` stops at the first such row
    instead, ``"skip"`` drops those rows and counts them (reason ``overlong``).

Errors
    Every bad row raises one `PreferenceDataError` naming the source, the row (``line N``,
    1-based, for JSONL; ``row N`` otherwise), the field, and the fix. With
    ``skip_invalid=True`` bad rows are dropped instead and counted per reason (see
    `REASONS`); a source with no good row left is still an error. A file that cannot be
    read at all (not UTF-8, a corrupt Parquet file) is one error for the whole source; a
    UTF-8 byte-order mark is read, not an error.
"""
