"""Independent numpy oracles for jax_distops, transcribed from the spec.

Each function here restates one op of `spec/monolith_ops.md` as plainly as possible: Python loops,
lists and dicts over Python ints, no vectorisation tricks and no code shared with the package under
test. The oracles are meant to be obviously correct, not fast (they still handle a few hundred
thousand ids in well under a second). They also apply jax_distops' deliberate deviations from
Monolith (DESIGN.md section 2) and its static-shape layout (DESIGN.md section 1): data-dependent
outputs are padded with 0 up to their static bound, and every counter is int32.

Ops:
  * `split_by_indices` and `split_by_indices_gradient` (spec section 1);
  * `reorder_by_indices` (spec section 2);
  * `fused_reorder_by_indices` (spec section 3);
  * `ragged_split_by_indices` (spec section 4);
  * `map_id_to_embedding` and `map_id_to_embedding_gradient` (spec section 8);
  * `gather_embeddings_by_input` and `gather_embeddings_by_ids_gradient` (spec section 9);
  * `fused_gather_embeddings_by_input` and `fused_gather_embeddings_by_input_gradient` (spec
    section 10).
Besides the static-shape layouts, `split_by_indices_list` and `ragged_split_by_indices_lists`
restate Monolith's own list outputs (one array / ragged value per split) directly from the spec,
so the result objects' `to_list()` / `to_ragged_list()` are checked against an independent
construction.
"""

from typing import NamedTuple, Optional, Sequence

import numpy as np

INT32_MAX = 2**31 - 1


class FusedReorderExpected(NamedTuple):
    """Expected outputs of `fused_reorder_by_indices`, same fields and order as the op's result."""

    ids: np.ndarray  # input dtype, [N_tot]: deduped ids, then zero padding
    shard_sizes: np.ndarray  # int32 [S]
    sharded_slot_sizes: np.ndarray  # int32 [S*M]
    slot_sizes: np.ndarray  # int32 [M]  (Monolith output 3, emb_offset_sz)
    fused_embedding_offsets: np.ndarray  # int32 [N_tot]  (Monolith output 4, fused_emb_offset)
    num_unique: np.ndarray  # int32 scalar
    fused_embedding_size: np.ndarray  # int32 scalar, E_tot


def fused_reorder_by_indices(
    ids_list: Sequence[np.ndarray],
    num_of_shards: int,
    dim_sizes: Optional[Sequence[int]] = None,
    rank0_empty: bool = False,
) -> FusedReorderExpected:
    """Spec section 3.2, with floor-mod sharding for signed ids (DESIGN.md section 2).

    Args:
      ids_list: M one-dimensional integer arrays, all of one dtype (the tables).
      num_of_shards: S >= 1.
      dim_sizes: embedding dim of each table; None means all 1.
      rank0_empty: the already-resolved rank-0-empty flag (the oracle never reads the environment).

    Returns:
      The seven outputs, padded to the static lengths of the JAX op.
    """
    tables = [np.asarray(t) for t in ids_list]
    dtype = tables[0].dtype
    assert dtype.kind in "iu", dtype
    assert all(t.dtype == dtype and t.ndim == 1 for t in tables)
    num_tables = len(tables)
    dims = [1] * num_tables if dim_sizes is None else [int(d) for d in dim_sizes]
    assert len(dims) == num_tables and all(d >= 1 for d in dims)
    r = 1 if rank0_empty else 0
    modulus = num_of_shards - r
    assert modulus >= 1

    def shard(v: int) -> int:
        # v is a Python int holding the exact id value (unsigned values stay >= 0). Python's `%`
        # is floor-mod, so this is floormod(v, S - r) + r for signed ids and plain mod for
        # unsigned ones; a negative id lands in [r, S).
        return v % modulus + r

    # blocks[n][m] is B[n][m]: the distinct ids of table m whose shard is n, in first-occurrence
    # order.
    blocks = [[[] for _ in range(num_tables)] for _ in range(num_of_shards)]
    # where[m][v] = (shard of v, position of v inside B[shard][m]); dedup is per table only.
    where = [{} for _ in range(num_tables)]
    for m, table in enumerate(tables):
        for v in table.tolist():
            if v not in where[m]:
                n = shard(v)
                where[m][v] = (n, len(blocks[n][m]))
                blocks[n][m].append(v)

    # base[n, m]: number of floats in all blocks before block (n, m), shard-major then table-minor.
    base = {}
    total_floats = 0
    for n in range(num_of_shards):
        for m in range(num_tables):
            base[n, m] = total_floats
            total_floats += len(blocks[n][m]) * dims[m]
    if total_floats > INT32_MAX:
        raise ValueError(f"E_tot = {total_floats} does not fit in int32")

    # Output 4: for every raw element, in input order, base(shard(v), m) + local(m, v).
    offsets = []
    for m, table in enumerate(tables):
        for v in table.tolist():
            n, position = where[m][v]
            offsets.append(base[n, m] + position * dims[m])

    # Output 0: concat over shards, then over tables, of B[n][m]; padded with 0 to N_tot.
    unique = [v for n in range(num_of_shards) for m in range(num_tables) for v in blocks[n][m]]
    total_ids = sum(len(t) for t in tables)
    ids = np.zeros(total_ids, dtype=dtype)
    ids[: len(unique)] = np.array(unique, dtype=dtype)

    shard_sizes = [sum(len(blocks[n][m]) for m in range(num_tables)) for n in range(num_of_shards)]
    sharded_slot_sizes = [
        len(blocks[n][m]) for n in range(num_of_shards) for m in range(num_tables)
    ]
    return FusedReorderExpected(
        ids=ids,
        shard_sizes=np.array(shard_sizes, dtype=np.int32),
        sharded_slot_sizes=np.array(sharded_slot_sizes, dtype=np.int32),
        slot_sizes=np.array([len(t) for t in tables], dtype=np.int32),
        fused_embedding_offsets=np.array(offsets, dtype=np.int32),
        num_unique=np.array(len(unique), dtype=np.int32),
        fused_embedding_size=np.array(total_floats, dtype=np.int32),
    )


# --------------------------------------------------------------------------------------------------
# split_by_indices (spec section 1)
# --------------------------------------------------------------------------------------------------


class SplitExpected(NamedTuple):
    """Expected outputs of `split_by_indices`, same fields and order as the op's result."""

    values: np.ndarray  # tensor dtype, [N, *E]: rows split-major, stable within a split
    split_sizes: np.ndarray  # int32 [S]


def _split_destinations(indices: np.ndarray, num_splits: int) -> list:
    """dest[i]: the row of the split-major layout that input row i goes to (spec 1.2 / 1.3).

    dest[i] = offset[indices[i]] + r_i, where offset[s] counts the rows of all splits before s and
    r_i = #{k < i : indices[k] == indices[i]}.
    """
    idx = [int(v) for v in np.asarray(indices).tolist()]
    for i, s in enumerate(idx):
        if not 0 <= s < num_splits:
            raise ValueError(f"oracle: indices[{i}] = {s} is outside [0, {num_splits})")
    counts = [0] * num_splits
    for s in idx:
        counts[s] += 1
    offsets = []
    running = 0
    for s in range(num_splits):
        offsets.append(running)
        running += counts[s]
    seen = [0] * num_splits  # rows of split s placed so far
    dest = []
    for s in idx:
        dest.append(offsets[s] + seen[s])
        seen[s] += 1
    return dest


def split_by_indices(indices, tensor, num_splits: int) -> SplitExpected:
    """Spec 1.2: a stable partition of the rows of `tensor` by `indices` (no dedup).

    Args:
      indices: 1-D integer `[N]`, every entry in `[0, num_splits)`.
      tensor: `[N, *E]`, any dtype (rows are only moved, never looked at).
      num_splits: S >= 1.

    Returns:
      `values` (the rows of split 0 in ascending input order, then split 1, ...) and `split_sizes`.
    """
    indices = np.asarray(indices)
    tensor = np.asarray(tensor)
    assert indices.ndim == 1 and tensor.ndim >= 1 and tensor.shape[0] == indices.shape[0]
    assert num_splits >= 1
    idx = [int(v) for v in indices.tolist()]
    rows_of = [[] for _ in range(num_splits)]  # input rows of each split, ascending
    for i, s in enumerate(idx):
        if not 0 <= s < num_splits:
            raise ValueError(f"oracle: indices[{i}] = {s} is outside [0, {num_splits})")
        rows_of[s].append(i)
    values = np.zeros_like(tensor)
    out_row = 0
    for s in range(num_splits):
        for i in rows_of[s]:
            values[out_row] = tensor[i]
            out_row += 1
    sizes = [len(rows) for rows in rows_of]
    return SplitExpected(values=values, split_sizes=np.array(sizes, dtype=np.int32))


def split_by_indices_gradient(indices, grads, num_splits: int) -> np.ndarray:
    """Spec 1.3: `g_in[i] = grads[indices[i]][r_i]`, i.e. `grads[dest(i)]` (split-major layout).

    Args:
      indices: 1-D integer `[N]`, every entry in `[0, num_splits)`.
      grads: `[N, *E]` in the layout of `split_by_indices(...).values` (split-major).
      num_splits: S >= 1.

    Returns:
      `[N, *E]` gradient rows in the original input order (the inverse permutation).
    """
    grads = np.asarray(grads)
    assert grads.ndim >= 1 and grads.shape[0] == len(indices)
    dest = _split_destinations(indices, num_splits)
    out = np.zeros_like(grads)
    for i, d in enumerate(dest):
        out[i] = grads[d]
    return out


def split_by_indices_list(indices, tensor, num_splits: int) -> list:
    """Monolith's own output (spec 1.1): S arrays, `out_s = [tensor[i] if indices[i] == s]`."""
    tensor = np.asarray(tensor)
    idx = [int(v) for v in np.asarray(indices).tolist()]
    rows_of = [[] for _ in range(num_splits)]
    for i, s in enumerate(idx):
        rows_of[s].append(i)
    out = []
    for s in range(num_splits):
        piece = np.zeros((len(rows_of[s]),) + tensor.shape[1:], dtype=tensor.dtype)
        for k, i in enumerate(rows_of[s]):
            piece[k] = tensor[i]
        out.append(piece)
    return out


# --------------------------------------------------------------------------------------------------
# reorder_by_indices (spec section 2)
# --------------------------------------------------------------------------------------------------


class ReorderExpected(NamedTuple):
    """Expected outputs of `reorder_by_indices`, same fields and order as the op's result."""

    output: np.ndarray  # input dtype, input shape: kept rows shard by shard, then zero rows
    shard_sizes: np.ndarray  # int32 [S]
    num_unique: np.ndarray  # int32 scalar


def reorder_by_indices(input, shard_ids, num_of_shards: int) -> ReorderExpected:  # noqa: A002
    """Spec 2.2, padded with zero rows to the input's shape (DESIGN.md section 1).

    1. key(i) = input[i] (1-D) or input[i, 0] (2-D; the other columns are ignored, Appendix A20).
    2. Row i is kept iff key(i) was not seen at any earlier row; its shard is shard_ids[i] of that
       first occurrence (later duplicates' shard ids are ignored).
    3. Output: for s = 0..S-1, shard s's kept rows in REVERSE first-occurrence order.
    4. Float keys: +0.0 == -0.0 (one key; the kept row is copied as is), every NaN is its own key.

    Args:
      input: `[N]` or `[N, E]` (E >= 1).
      shard_ids: 1-D integer `[N]`, every entry in `[0, num_of_shards)` (also for duplicates: the
        jax_distops op checks them all).
      num_of_shards: S >= 1.
    """
    rows = np.asarray(input)
    sids = [int(v) for v in np.asarray(shard_ids).tolist()]
    assert rows.ndim in (1, 2) and len(sids) == rows.shape[0] and num_of_shards >= 1
    assert rows.ndim == 1 or rows.shape[1] >= 1
    for i, s in enumerate(sids):
        if not 0 <= s < num_of_shards:
            raise ValueError(f"oracle: shard_ids[{i}] = {s} is outside [0, {num_of_shards})")
    keys = (rows if rows.ndim == 1 else rows[:, 0]).tolist()  # Python ints / floats
    seen = set()
    kept = [[] for _ in range(num_of_shards)]  # kept input rows per shard, first-occurrence order
    for i, key in enumerate(keys):
        if isinstance(key, float) and key != key:
            kept[sids[i]].append(i)  # NaN: never equal to anything, always kept
            continue
        # Python's float equality and hash already make 0.0 and -0.0 one key.
        if key in seen:
            continue
        seen.add(key)
        kept[sids[i]].append(i)
    output = np.zeros_like(rows)
    out_row = 0
    for s in range(num_of_shards):
        for i in reversed(kept[s]):
            output[out_row] = rows[i]
            out_row += 1
    return ReorderExpected(
        output=output,
        shard_sizes=np.array([len(k) for k in kept], dtype=np.int32),
        num_unique=np.array(out_row, dtype=np.int32),
    )


# --------------------------------------------------------------------------------------------------
# ragged_split_by_indices (spec section 4)
# --------------------------------------------------------------------------------------------------


class RaggedSplitExpected(NamedTuple):
    """Expected outputs of `ragged_split_by_indices`, same fields and order as the op's result."""

    values: np.ndarray  # values dtype [N]: split-major, stable
    positions: np.ndarray  # row_splits dtype [N]: the flat input index of each value
    row_splits: np.ndarray  # row_splits dtype [S, R+1]: ABSOLUTE offsets into `values`


def _check_ragged_inputs(indices, values, row_splits, num_splits):
    idx = [int(v) for v in np.asarray(indices).tolist()]
    vals = np.asarray(values)
    splits = [int(v) for v in np.asarray(row_splits).tolist()]
    assert vals.ndim == 1 and len(idx) == vals.shape[0] and num_splits >= 1
    assert len(splits) >= 1, "row_splits needs at least one entry"
    if splits[0] != 0 or splits[-1] != len(idx):
        raise ValueError(f"oracle: row_splits {splits} do not span [0, {len(idx)}]")
    if any(b < a for a, b in zip(splits, splits[1:])):
        raise ValueError(f"oracle: row_splits {splits} decrease")
    for i, s in enumerate(idx):
        if not 0 <= s < num_splits:
            raise ValueError(f"oracle: indices[{i}] = {s} is outside [0, {num_splits})")
    return idx, vals, splits


def ragged_split_by_indices(indices, values, row_splits, num_splits: int) -> RaggedSplitExpected:
    """Spec 4.2 in jax_distops' static layout (DESIGN.md section 3).

    Split s holds `[values[i] for i ascending if indices[i] == s]` with positions `i`; splits are
    concatenated in order. `row_splits[s, r] = offset_s + #{i < row_splits_in[r] : indices[i] == s}`
    where offset_s is the number of values of all splits before s.

    Args:
      indices: 1-D integer `[N]`, every entry in `[0, num_splits)`.
      values: 1-D `[N]`, the ragged input's flat values.
      row_splits: 1-D integer `[R+1]`, valid: starts at 0, non-decreasing, ends at N.
      num_splits: S >= 1.
    """
    idx, vals, splits = _check_ragged_inputs(indices, values, row_splits, num_splits)
    splits_dtype = np.asarray(row_splits).dtype
    n = len(idx)
    positions_of = [[] for _ in range(num_splits)]  # input positions of each split, ascending
    for i, s in enumerate(idx):
        positions_of[s].append(i)
    offsets = []
    running = 0
    for s in range(num_splits):
        offsets.append(running)
        running += len(positions_of[s])
    # Walk the row boundaries in order; counts[s] = #{i < bound : indices[i] == s}.
    out_splits = [[0] * len(splits) for _ in range(num_splits)]
    counts = [0] * num_splits
    i = 0
    for r, bound in enumerate(splits):
        while i < bound:
            counts[idx[i]] += 1
            i += 1
        for s in range(num_splits):
            out_splits[s][r] = offsets[s] + counts[s]
    order = [i for s in range(num_splits) for i in positions_of[s]]
    values_out = np.zeros_like(vals)
    for k, i in enumerate(order):
        values_out[k] = vals[i]
    return RaggedSplitExpected(
        values=values_out,
        positions=np.array(order, dtype=splits_dtype).reshape(n),
        row_splits=np.array(out_splits, dtype=splits_dtype).reshape(num_splits, len(splits)),
    )


def ragged_split_by_indices_lists(indices, values, row_splits, num_splits: int):
    """Monolith's own two outputs (spec 4.1/4.2): per split, a ragged value, relative row splits.

    Returns:
      `(values_list, positions_list)`; each is a list of S `(flat, row_splits)` pairs of numpy
      arrays, where split s's row r is `flat[row_splits[r]:row_splits[r+1]]`, `row_splits[0] == 0`.
    """
    idx, vals, splits = _check_ragged_inputs(indices, values, row_splits, num_splits)
    splits_dtype = np.asarray(row_splits).dtype
    flat_values = [[] for _ in range(num_splits)]
    flat_positions = [[] for _ in range(num_splits)]
    rel_splits = [[0] for _ in range(num_splits)]
    for r in range(len(splits) - 1):
        for i in range(splits[r], splits[r + 1]):
            flat_values[idx[i]].append(vals[i])
            flat_positions[idx[i]].append(i)
        for s in range(num_splits):
            rel_splits[s].append(len(flat_values[s]))
    values_list, positions_list = [], []
    for s in range(num_splits):
        value_arr = np.zeros(len(flat_values[s]), dtype=vals.dtype)
        for k, v in enumerate(flat_values[s]):
            value_arr[k] = v
        rs = np.array(rel_splits[s], dtype=splits_dtype)
        values_list.append((value_arr, rs))
        positions_list.append((np.array(flat_positions[s], dtype=splits_dtype), rs.copy()))
    return values_list, positions_list


# --------------------------------------------------------------------------------------------------
# map_id_to_embedding and gather_embeddings_by_input (spec sections 8 and 9)
# --------------------------------------------------------------------------------------------------


def _lookup_accumulation_dtype(dtype) -> np.dtype:
    """The lookup gradients sum in float32 (float32 and bfloat16 grads) or float64 (float64 grads)
    and round to the grads' dtype once, at the end (as the ops document)."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.dtype(np.float64)
    if dtype == np.float32 or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    raise AssertionError(f"oracle: unsupported float dtype {dtype}")


def _num_elements(shape) -> int:
    count = 1
    for n in shape:
        count *= int(n)
    return count


def _first_split_and_row(ids_list) -> dict:
    """Spec 8.2: id -> (s, j), scanning s = 0..S-1, then j = 0..K_s-1; the FIRST mapping wins."""
    where = {}
    for s, ids in enumerate(ids_list):
        for j, v in enumerate(np.asarray(ids).tolist()):
            if v not in where:
                where[v] = (s, j)
    return where


def map_id_to_embedding(ids_list, embeddings_list, input) -> np.ndarray:  # noqa: A002
    """Spec 8.2: `out[idx] = embeddings_list[s][j]` for `(s, j) = map[input[idx]]`.

    Args:
      ids_list: S >= 1 one-dimensional integer arrays (K_s ids each).
      embeddings_list: S float arrays `[K_s, D]`, one dtype, one D.
      input: integer ids of any shape (rank 0 too); every one must be in the map.

    Returns:
      `[*input.shape, D]` in the embeddings' dtype (rows copied bit for bit).
    """
    tables = [np.asarray(t) for t in ids_list]
    embs = [np.asarray(e) for e in embeddings_list]
    assert len(tables) == len(embs) >= 1
    width, dtype = embs[0].shape[1], embs[0].dtype
    for t, e in zip(tables, embs):
        assert t.ndim == 1 and e.dtype == dtype and e.shape == (t.shape[0], width)
    where = _first_split_and_row(tables)
    inp = np.asarray(input)
    flat = inp.reshape(-1).tolist()
    out = np.zeros((len(flat), width), dtype=dtype)
    for k, v in enumerate(flat):
        if v not in where:
            raise ValueError(f"oracle: Unable to map id {v}")
        s, j = where[v]
        out[k] = embs[s][j]
    return out.reshape(inp.shape + (width,))


def map_id_to_embedding_gradient(ids_list, input, grads) -> list:  # noqa: A002
    """Spec 8.3: `out[s][j] = sum of grads[k]` over flat k ascending with `map[input[k]] == (s, j)`.

    Args:
      ids_list: S >= 1 one-dimensional integer arrays (K_s ids each).
      input: integer ids of any shape; every one must be in the map.
      grads: `[*input.shape, D]` float.

    Returns:
      S arrays `[K_s, D]` in grads' dtype; rows never hit are 0. Summed sequentially in ascending
      flat input order in float32 (float64 for float64 grads), rounded to grads' dtype once.
    """
    tables = [np.asarray(t) for t in ids_list]
    assert len(tables) >= 1 and all(t.ndim == 1 for t in tables)
    inp = np.asarray(input)
    grads = np.asarray(grads)
    assert grads.ndim >= 1 and grads.shape[:-1] == inp.shape, (grads.shape, inp.shape)
    width = grads.shape[-1]
    acc_dtype = _lookup_accumulation_dtype(grads.dtype)
    flat_grads = grads.reshape(_num_elements(inp.shape), width)
    where = _first_split_and_row(tables)
    acc = [np.zeros((t.shape[0], width), dtype=acc_dtype) for t in tables]
    for k, v in enumerate(inp.reshape(-1).tolist()):
        if v not in where:
            raise ValueError(f"oracle: Unable to map id {v}")
        s, j = where[v]
        acc[s][j] += flat_grads[k].astype(acc_dtype)
    return [a.astype(grads.dtype) for a in acc]


class GatherExpected(NamedTuple):
    """Expected outputs of `gather_embeddings_by_input`, same fields and order as the op's result."""

    output: np.ndarray  # embeddings dtype, [*input.shape, D]
    index_mapping: np.ndarray  # int64, [*input.shape] (the op gives int32 when x64 is off)


def gather_embeddings_by_input(ids, embeddings, input) -> GatherExpected:  # noqa: A002
    """Spec 9.2: `index_mapping[idx]` = the first j with `ids[j] == input[idx]`;
    `output[idx] = embeddings[index_mapping[idx]]`.

    Args:
      ids: 1-D integer `[M]`.
      embeddings: float `[M, D]`.
      input: integer ids of any shape; every one must be in `ids`.
    """
    ids = np.asarray(ids)
    embeddings = np.asarray(embeddings)
    assert ids.ndim == 1 and embeddings.ndim == 2 and embeddings.shape[0] == ids.shape[0]
    first = {}
    for j, v in enumerate(ids.tolist()):
        if v not in first:
            first[v] = j
    inp = np.asarray(input)
    flat = inp.reshape(-1).tolist()
    output = np.zeros((len(flat), embeddings.shape[1]), dtype=embeddings.dtype)
    mapping = np.zeros(len(flat), dtype=np.int64)
    for k, v in enumerate(flat):
        if v not in first:
            raise ValueError(f"oracle: Unable to map id {v}")
        mapping[k] = first[v]
        output[k] = embeddings[first[v]]
    return GatherExpected(
        output=output.reshape(inp.shape + (embeddings.shape[1],)),
        index_mapping=mapping.reshape(inp.shape),
    )


def gather_embeddings_by_ids_gradient(num_rows: int, grads, index_mapping) -> np.ndarray:
    """Spec 9.3: `out[index_mapping[k]] += grads[k]` for flat k ascending; `[num_rows, D]`.

    Summed in float32 (float64 for float64 grads), rounded to grads' dtype once; rows never hit
    are 0. Every index_mapping entry must be in `[0, num_rows)`.
    """
    grads = np.asarray(grads)
    mapping = np.asarray(index_mapping)
    assert grads.ndim >= 1 and grads.shape[:-1] == mapping.shape, (grads.shape, mapping.shape)
    width = grads.shape[-1]
    acc_dtype = _lookup_accumulation_dtype(grads.dtype)
    flat_grads = grads.reshape(_num_elements(mapping.shape), width)
    acc = np.zeros((num_rows, width), dtype=acc_dtype)
    for k, j in enumerate(mapping.reshape(-1).tolist()):
        if not 0 <= j < num_rows:
            raise ValueError(f"oracle: index_mapping[{k}] = {j} is outside [0, {num_rows})")
        acc[j] += flat_grads[k].astype(acc_dtype)
    return acc.astype(grads.dtype)


# --------------------------------------------------------------------------------------------------
# fused_gather_embeddings_by_input (spec section 10)
# --------------------------------------------------------------------------------------------------


def fused_gather_embeddings_by_input(fused_embeddings, offsets_list, dims) -> list:
    """Spec 10.2 forward: `out_m[j, :] = flat[off_m[j] : off_m[j] + dims[m]]`.

    Args:
      fused_embeddings: float array of any shape, read flattened (length E).
      offsets_list: M one-dimensional integer arrays (L_m offsets each).
      dims: M ints >= 1.

    Returns:
      M arrays `[L_m, dims[m]]` in fused_embeddings' dtype (values copied bit for bit).
    """
    flat = np.asarray(fused_embeddings).reshape(-1)
    assert len(offsets_list) == len(dims)
    outputs = []
    for m, (offsets, dim) in enumerate(zip(offsets_list, dims)):
        offsets = np.asarray(offsets)
        assert offsets.ndim == 1 and int(dim) >= 1
        out = np.zeros((offsets.shape[0], int(dim)), dtype=flat.dtype)
        for j, off in enumerate(offsets.tolist()):
            if off < 0 or off + dim > flat.shape[0]:
                raise ValueError(
                    f"oracle: table {m} offset {off} (dim {dim}) is outside [0, {flat.shape[0]}]"
                )
            out[j, :] = flat[off : off + dim]
        outputs.append(out)
    return outputs


def fused_gather_embeddings_by_input_gradient(
    size: int, grads_list, offsets_list, dims, scale=1.0, dtype=None
) -> np.ndarray:
    """Spec 10.2 gradient with jax_distops' deviations (DESIGN.md section 2: scale always applied,
    deterministic) and the documented summation order.

    `out[i] = scale * sum(grads_m[j, i - off_m[j]] for m ascending, then j ascending, over every
    (m, j) with off_m[j] <= i < off_m[j] + dims[m])`. The sum runs sequentially in float32
    (float64 for float64 grads), the product with `scale` (rounded to that precision first) is
    taken in the same precision, and the result is rounded to grads' dtype once. Entries no row
    touches are `0 * scale`.

    Args:
      size: E >= 0, the length of the output.
      grads_list: M float arrays `[L_m, dims[m]]`, one dtype.
      offsets_list: M one-dimensional integer arrays (L_m offsets each), each in `[0, E - dims[m]]`.
      dims: M ints >= 1.
      scale: a float (or numpy scalar).
      dtype: the output dtype when M == 0 (otherwise grads' dtype; must agree if given).

    Returns:
      `[size]` in grads' dtype.
    """
    grads = [np.asarray(g) for g in grads_list]
    assert len(grads) == len(offsets_list) == len(dims)
    if grads:
        assert dtype is None or np.dtype(dtype) == grads[0].dtype
        dtype = grads[0].dtype
    assert dtype is not None, "oracle: pass dtype when there are no tables"
    acc_dtype = _lookup_accumulation_dtype(dtype)
    acc = np.zeros(int(size), dtype=acc_dtype)
    for m, (g, offsets, dim) in enumerate(zip(grads, offsets_list, dims)):
        offsets = np.asarray(offsets)
        assert g.dtype == np.dtype(dtype) and offsets.ndim == 1
        assert g.shape == (offsets.shape[0], int(dim)), (g.shape, offsets.shape, dim)
        for j, off in enumerate(offsets.tolist()):
            if off < 0 or off + dim > size:
                raise ValueError(
                    f"oracle: table {m} offset {off} (dim {dim}) is outside [0, {size}]"
                )
            # One float add per element, in (m, j) order: the slice add is elementwise.
            acc[off : off + dim] += g[j].astype(acc_dtype)
    scale = acc_dtype.type(np.asarray(scale).astype(np.float64).item())
    return (acc * scale).astype(dtype)
