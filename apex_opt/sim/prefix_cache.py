"""Prefix cache of one virtual engine: KV blocks of shared prompt prefixes, reused across requests.

The workload describes sharing as ``Requests.prefix_blocks``: per request the ids of its prompt's
consecutive *units* of ``unit_tokens`` tokens (Mooncake: 512); equal leading ids = equal tokens. A
cached unit is a node keyed by (parent node, unit id), so a node stands for the whole prefix up to
it -- exactly like vLLM's chained block hashes and a path in SGLang's radix tree.

* ``block_hash`` (vLLM, ``vllm/v1/core/kv_cache_manager.py`` + ``block_pool.py``): only *full*
  engine blocks are cached; a node owns the full blocks its unit completes
  (``C_k // bs - C_{k-1} // bs`` for cumulative unit tokens ``C``), the partial tail block of a
  prompt stays private. A hit is a whole number of blocks and never the whole prompt: at most
  ``(tokens - 1) // bs`` blocks, so the last token is always recomputed.
* ``radix`` (SGLang, ``mem_cache/radix_cache.py``): token granular (``bs = 1``), a hit is capped at
  ``tokens - 1`` as SGLang matches ``input_ids[:-1]``.

Blocks of nodes referenced by a running request count as used; nodes nobody references are *free
cached*: they still hold their blocks but are evictable, least recently released first (a request
releases its chain deepest-first, so leaves go before their parents, as vLLM frees tail blocks
first and SGLang evicts leaves). Evicting a node also drops its cached descendants (unreachable).
"""

from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    """Cached prefix nodes of one virtual engine (see the module docstring)."""

    __slots__ = ("bs", "unit", "nodes", "key_of", "parent", "blocks", "refs", "children",
                 "free", "free_blocks", "_next", "hits_tokens", "lookups_tokens")

    def __init__(self, block_size: int, unit_tokens: int):
        self.bs = block_size
        self.unit = unit_tokens
        self.nodes: dict[tuple[int, int], int] = {}    # (parent node, unit id) -> node
        self.key_of: dict[int, tuple[int, int]] = {}
        self.parent: dict[int, int] = {}
        self.blocks: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.children: dict[int, set[int]] = {}
        self.free: OrderedDict[int, None] = OrderedDict()  # unreferenced nodes, LRU first
        self.free_blocks = 0
        self._next = 1  # node 0 = the root (empty prefix)
        self.hits_tokens = 0
        self.lookups_tokens = 0

    # ------------------------------------------------------------------ geometry
    def unit_blocks(self, k: int, prompt: int) -> int:
        """Cacheable blocks of unit ``k`` (0-based) of a ``prompt``-token prompt."""
        u, bs = self.unit, self.bs
        hi = min((k + 1) * u, prompt)
        lo = min(k * u, prompt)
        return hi // bs - lo // bs

    # ------------------------------------------------------------------ lookup / reference
    def match(self, ids: tuple[int, ...], prompt: int, target: int) -> tuple[list[int], int]:
        """Longest cached chain for a prompt with unit ``ids``: (nodes, hit blocks). ``target`` is
        the number of tokens to prefill (prompt + generated after a preemption); the hit leaves
        at least its last token to compute."""
        chain: list[int] = []
        parent = 0
        cached = 0
        for k, uid in enumerate(ids):
            node = self.nodes.get((parent, uid))
            if node is None:
                break
            chain.append(node)
            cached += self.blocks[node]
            parent = node
        cap = (target - 1) // self.bs
        self.lookups_tokens += target
        hit = min(cached, cap)
        self.hits_tokens += hit * self.bs
        return chain, hit

    def ref(self, chain: list[int]) -> int:
        """Reference ``chain``; returns the blocks that were free cached and are now in use."""
        revived = 0
        for node in chain:
            r = self.refs[node]
            if r == 0:
                del self.free[node]
                b = self.blocks[node]
                self.free_blocks -= b
                revived += b
            self.refs[node] = r + 1
        return revived

    def release(self, chain: list[int]) -> int:
        """Drop one reference to every node of ``chain``; returns the blocks that became free
        cached (still resident, now evictable)."""
        freed = 0
        for node in reversed(chain):  # deepest first: leaves are evicted before their parents
            if node not in self.refs:  # evicted with an ancestor while referenced: impossible
                continue
            r = self.refs[node] - 1
            self.refs[node] = r
            if r == 0:
                self.free[node] = None
                b = self.blocks[node]
                self.free_blocks += b
                freed += b
        return freed

    def insert(self, parent: int, uid: int, blocks: int) -> int | None:
        """Cache a unit computed by a request that references ``parent`` (0 = root): a new node
        holding ``blocks`` of that request's blocks, referenced once (by it). ``None`` when the
        key is already cached (another request computed it meanwhile: ours stay private)."""
        key = (parent, uid)
        if key in self.nodes:
            return None
        node = self._next
        self._next += 1
        self.nodes[key] = node
        self.key_of[node] = key
        self.parent[node] = parent
        self.blocks[node] = blocks
        self.refs[node] = 1
        self.children.setdefault(parent, set()).add(node)
        return node

    # ------------------------------------------------------------------ eviction
    def evict(self, blocks_needed: int) -> int:
        """Evict free cached nodes, least recently released first, until ``blocks_needed`` blocks
        were freed or nothing is left; returns the blocks freed."""
        got = 0
        while got < blocks_needed and self.free:
            node = next(iter(self.free))
            got += self._drop(node)
        return got

    def _drop(self, node: int) -> int:
        got = 0
        for child in list(self.children.get(node, ())):
            got += self._drop(child)
        # a free node's descendants are free too (a reference pins the whole chain)
        if node in self.free:
            del self.free[node]
            self.free_blocks -= self.blocks[node]
            got += self.blocks[node]
        key = self.key_of.pop(node)
        del self.nodes[key]
        self.children.get(key[0], set()).discard(node)
        self.children.pop(node, None)
        del self.parent[node], self.blocks[node], self.refs[node]
        return got

    @property
    def cached_blocks(self) -> int:
        return sum(self.blocks.values())
