"""Token tries for packed rows: rows that share token prefixes laid out as one sequence per trie,
each token attending to its ancestors only (`pdalign.policy.logprobs._packed_states` runs them).
Pure list and tensor work, no model."""

from __future__ import annotations

import torch

# A packed row holds at most this many trie positions (a single longer row excepted): its
# attention is (L, L) per head under an explicit mask, no causal shortcut, ~25% of the
# decoder's matmul FLOPs at L = 1024 on SmolLM2 (hidden 576), ~13% at 512. A larger trie is cut
# into several rows, each its own decoder call (so none is padded to another), each repeating
# the prefix it shares with the others.
PACK_TOKENS = 1024


def trie_groups(seqs: list[list[int]], budget: int) -> list[tuple[list[int], list[list[int]]]]:
    """Token tries over ``seqs`` (each row's tokens up to the last one that predicts a response
    token) of at most ``budget`` nodes each, rows taken in lexicographic order (so rows that
    share a prefix share a trie) until the next would overflow it.

    Returns [(rows of the trie, [node path of each row])], a node numbered in creation order,
    so a parent precedes its children."""
    groups, members, paths, children = [], [], [], {}
    for i in sorted(range(len(seqs)), key=lambda i: seqs[i]):
        seq, cur, new = seqs[i], -1, 0
        for d, tok in enumerate(seq):  # the nodes it would add: every token from its first miss
            cur = children.get((cur, tok))
            if cur is None:
                new = len(seq) - d
                break
        if members and len(children) + new > budget:
            groups.append((members, paths))
            members, paths, children = [], [], {}
        cur, path = -1, []
        for tok in seq:
            cur = children.setdefault((cur, tok), len(children))
            path.append(cur)
        members.append(i)
        paths.append(path)
    if members:
        groups.append((members, paths))
    return groups


def packed_row(ids: list[list[int]], members: list[int], paths: list[list[int]]):
    """One trie as a row: (tokens (1, L), depth as position (1, L), ancestor mask (1, 1, L, L)
    bool, True where a node may attend: itself and its ancestors)."""
    size = 1 + max((max(p) for p in paths if p), default=0)
    tokens, depth, parent = [0] * size, [0] * size, [-1] * size
    for i, path in zip(members, paths):
        for d, node in enumerate(path):
            tokens[node], depth[node] = ids[i][d], d
            parent[node] = path[d - 1] if d else -1
    allowed = torch.eye(size, dtype=torch.bool)
    for node in range(1, size):  # a parent's row is complete before its children's
        if parent[node] >= 0:
            allowed[node] |= allowed[parent[node]]
    return torch.tensor([tokens]), torch.tensor([depth]), allowed[None, None]
