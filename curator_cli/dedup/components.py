"""Step 4, groups: connected components of the pairs, and each image's nearest duplicate.

**Connected components, not a representative per group.** A group is every image linked to another
by a chain of pairs at or above the threshold. The alternative (SemDeDup's: keep a cluster's
representative, drop whatever is within the threshold of it) depends on the order images are
visited and on which one happens to be chosen; components depend on the pairs alone, so the same
inputs give the same groups whatever the partitioning, and ``--keep`` is free to choose any member.
The price is chaining: A~B and B~C put A and C in one group even if A and C are further apart than
the threshold (``nearest_id`` and ``similarity`` say how each image joined its group).

The components are computed by a union-find in numpy (hook each root onto the smaller one, then
shortcut every pointer to its root, until no pair crosses two roots: the Shiloach-Vishkin scheme,
vectorised), so no scipy is needed. Each partition is reduced to a spanning forest of its pairs
plus each image's best pair before it is saved, so what is kept grows with the images that have a
duplicate, not with the number of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph with edges ``a[i] - b[i]`` (global indices): (nodes, sorted;
    label of each node, the smallest node of its component)."""
    if len(a) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    la, lb = inverse[: len(a)], inverse[len(a):]
    parent = np.arange(len(nodes), dtype=np.int64)
    while True:
        ra, rb = parent[la], parent[lb]  # every pointer is a root here (shortcut below)
        cross = ra != rb
        if not cross.any():
            break
        la, lb, ra, rb = la[cross], lb[cross], ra[cross], rb[cross]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))  # hook the larger root onto the smaller
        while True:  # pointer jumping: afterwards every node points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return nodes, nodes[parent]


def spanning_forest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (node, label) that connect exactly what ``a - b`` connects: one per node that is not
    its component's smallest."""
    nodes, labels = components(a, b)
    linked = nodes != labels
    return nodes[linked], labels[linked]


def best_pairs(node: np.ndarray, partner: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each node's most similar partner among (node, partner, sim) rows; ties go to the smaller partner."""
    if len(node) == 0:
        return node, partner, sim
    order = np.lexsort((partner, -sim.astype(np.float64), node))
    node, partner, sim = node[order], partner[order], sim[order]
    first = np.r_[True, node[1:] != node[:-1]]
    return node[first], partner[first], sim[first]


@dataclass
class PairSummary:
    """What a set of pairs comes to for grouping: a spanning forest and each image's best pair."""

    link_a: np.ndarray
    link_b: np.ndarray
    best_node: np.ndarray
    best_partner: np.ndarray
    best_sim: np.ndarray

    @classmethod
    def empty(cls) -> PairSummary:
        i, f = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return cls(i, i, i, i, f)

    @classmethod
    def of(cls, summaries: list[PairSummary], a: np.ndarray, b: np.ndarray, sim: np.ndarray) -> PairSummary:
        """Fold pairs (``a``, ``b``, ``sim``) and earlier summaries into one."""
        link_a = np.concatenate([a] + [s.link_a for s in summaries])
        link_b = np.concatenate([b] + [s.link_b for s in summaries])
        forest_a, forest_b = spanning_forest(link_a, link_b)
        node = np.concatenate([a, b] + [s.best_node for s in summaries])
        partner = np.concatenate([b, a] + [s.best_partner for s in summaries])
        sims = np.concatenate([sim, sim] + [s.best_sim for s in summaries]).astype(np.float32)
        return cls(forest_a, forest_b, *best_pairs(node, partner, sims))

    @property
    def size(self) -> int:
        return len(self.link_a) + len(self.best_node)


@dataclass
class Groups:
    """The images that have at least one duplicate, by global index, with their group and best pair."""

    members: np.ndarray  # int64 global indices, sorted
    group: np.ndarray  # int64 dense group id of each member; groups numbered by their first member
    nearest: np.ndarray  # int64 global index of each member's most similar image
    similarity: np.ndarray  # float32

    @property
    def count(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0


def build_groups(summary: PairSummary) -> Groups:
    """Groups from the merged summary of every partition."""
    nodes, labels = components(summary.link_a, summary.link_b)
    _, group = np.unique(labels, return_inverse=True)
    best_node, best_partner, best_sim = best_pairs(summary.best_node, summary.best_partner, summary.best_sim)
    # every member has a best pair; look it up by position (both sorted by node)
    where = np.searchsorted(best_node, nodes)
    return Groups(members=nodes, group=group.astype(np.int64), nearest=best_partner[where],
                  similarity=best_sim[where])
