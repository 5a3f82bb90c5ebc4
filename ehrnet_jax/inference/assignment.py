"""Minimum-cost assignment that breaks exact ties as the reference's solver, munkres 3.0.0, does.

The reference's `HeatmapParser` matches candidates (rows) to people (columns) with
`Munkres().compute` of the `munkres` package, version 3.0.0 (the fixtures' grouping needs 3.x:
1.1.4 breaks two of the twelve cases). Its costs are `round(tag distance) * 100 - value`: with no
more rows than columns every complete assignment sums the same values, so optima that tie exactly
are common, and which one a solver returns decides who is grouped with whom. SciPy's
`linear_sum_assignment` returns another optimum than munkres 3.0.0 on 5-11% (N < G), 32-59%
(N = G) and 55-67% (N > G) of random matrices of such costs (sizes 1..30, rounded distances 0..3),
so it cannot stand in. `min_cost_assignment` takes munkres 3.0.0's steps:

1. More rows than columns: columns of cost 1e10 are appended (by the reference, before the call)
   to make the matrix square; a row that ends on one of them is left unassigned.
2. Warm start: row by row, the row's potential u_i is its minimum cost, and the row takes the
   lowest-index free column where its cost equals that minimum.
3. Every row left without a column, in row order, gets one along a shortest augmenting path in the
   reduced costs `cost - u_i - v_j`; the potentials are then updated. Which of equally short paths
   wins depends on the size:
   - n * m >= 16 (munkres' C kernel, in the order of SciPy's solver, Crouse 2016): Dijkstra over
     the columns, kept in a list that starts in descending index order, a reached column being
     replaced by the list's last. Each step reaches the nearest column; among equally near ones
     the last free one in the list, or the first if none is free. Distances are measured from the
     row being matched, `d + c_ij - u_i - v_j` with d the distance of row i's column.
   - n * m < 16 (munkres' pure-Python solver, the e-maxx Hungarian): each step reaches the nearest
     column, the lowest index on ties, and shifts the potentials and the remaining distances by
     its distance.
All arithmetic is float64, in munkres' order of operations, since its rounding decides near-ties.
Without its C kernel (a source install without a compiler) munkres 3.0.0 takes the second way at
every size, which can break ties differently; its wheels ship the kernel.
"""

import numpy as np

from ehrnet_jax.errors import UserError

PAD_COST = 1e10              # the reference's cost of a padded column ("starts a new person")
_HUNGARIAN_MAX_CELLS = 15    # up to this many cells munkres 3.0.0 uses its pure-Python solver


def min_cost_assignment(cost: np.ndarray) -> np.ndarray:
  """The column assigned to each row of `cost` (N, G), or -1: munkres 3.0.0's optimum.

  Every row gets a distinct column when N <= G. When N > G the matrix is padded to N x N with
  columns of cost `PAD_COST`, as the reference pads it, and the N - G rows that end on a padded
  column get -1. The result minimises the total cost, and among the optimal assignments it is
  the one `munkres.Munkres().compute` 3.0.0 returns for the padded matrix (float32 costs convert
  to float64 exactly): the same on 9,000 random tied matrices of sizes 1..30 and on every call
  of `grouping.match_by_tag` in 300 synthetic crowded images (tests/test_assignment.py checks a
  seeded set of them).

  Returns int64 (N,). Raises UserError if `cost` is not a finite 2-D array.
  """
  cost = np.asarray(cost, np.float64)
  if cost.ndim != 2 or not np.isfinite(cost).all():
    raise UserError(f"assignment cost: expected a finite 2-D array, got shape {cost.shape} "
                    f"with {np.size(cost) - np.isfinite(cost).sum()} non-finite entries")
  num_rows, num_cols = cost.shape
  if num_rows == 0:
    return np.zeros(0, np.int64)
  if num_rows > num_cols:
    cost = np.concatenate([cost, np.full((num_rows, num_rows - num_cols), PAD_COST)], axis=1)
  first_minimum = cost.argmin(1)                                         # (N,)
  if num_rows <= num_cols and len(set(first_minimum.tolist())) == num_rows:
    return first_minimum    # the common case: the warm start alone matches every row
  col_of_row = _assign_from_warm_start(cost.tolist(), first_minimum.tolist())
  return np.array([col if col < num_cols else -1 for col in col_of_row], np.int64)


def _assign_from_warm_start(rows: list[list[float]], first_minimum: list[int]) -> list[int]:
  """The warm start's greedy matching, then an augmenting path for each row it left out."""
  num_cols = len(rows[0])
  row_min = [row[j] for row, j in zip(rows, first_minimum)]
  col_of_row = [-1] * len(rows)
  row_of_col = [-1] * num_cols
  for i, (row, low, j) in enumerate(zip(rows, row_min, first_minimum)):
    if row_of_col[j] >= 0:    # taken: the next free column at the row's minimum, if any
      j = next((k for k in range(j + 1, num_cols) if row[k] == low and row_of_col[k] < 0), -1)
    if j >= 0:
      col_of_row[i], row_of_col[j] = j, i
  if len(rows) * num_cols <= _HUNGARIAN_MAX_CELLS:
    _augment_hungarian(rows, row_min, col_of_row, row_of_col)
  else:
    _augment_shortest_paths(rows, row_min, col_of_row, row_of_col)
  return col_of_row


def _augment_shortest_paths(rows, u, col_of_row, row_of_col):
  """Matches each unmatched row along a shortest augmenting path, in SciPy's (Crouse's) order.

  `u` starts as the row minima (column potentials v start at 0); updates `col_of_row` and
  `row_of_col` in place.
  """
  num_cols = len(row_of_col)
  v = [0.0] * num_cols
  for start in [row for row, col in enumerate(col_of_row) if col < 0]:
    shortest = [np.inf] * num_cols      # path length from `start` to each column
    via_row = [-1] * num_cols           # the row before each column on its shortest path
    remaining = list(range(num_cols - 1, -1, -1))
    scanned = []                        # reached columns, all matched, in the order reached
    distance, row, sink = 0.0, start, -1
    while sink < 0:
      costs, u_row = rows[row], u[row]
      lowest, nearest = np.inf, -1
      for k, j in enumerate(remaining):
        reduced = distance + costs[j] - u_row - v[j]
        length = shortest[j]
        if reduced < length:
          shortest[j] = length = reduced
          via_row[j] = row
        if length < lowest or (length == lowest and row_of_col[j] < 0):
          lowest, nearest = length, k
      distance, j = lowest, remaining[nearest]
      if row_of_col[j] < 0:
        sink = j
      else:
        row = row_of_col[j]
        scanned.append(j)
        remaining[nearest] = remaining[-1]
        remaining.pop()
    u[start] += distance
    for j in scanned:
      u[row_of_col[j]] += distance - shortest[j]
      v[j] -= distance - shortest[j]
    _flip_path(sink, start, via_row, col_of_row, row_of_col)


def _flip_path(col, start, via_row, col_of_row, row_of_col):
  """Moves each row on the path that ends at free column `col` to its next column (in place)."""
  while True:
    row = via_row[col]
    row_of_col[col] = row
    col_of_row[row], col = col, col_of_row[row]
    if row == start:
      return


def _augment_hungarian(rows, u, col_of_row, row_of_col):
  """Matches each unmatched row with the e-maxx Hungarian method (munkres' pure-Python order).

  Same contract as `_augment_shortest_paths`.
  """
  num_cols = len(row_of_col)
  virtual = num_cols                     # a column holding the row being matched
  v = [0.0] * num_cols
  for start in [row for row, col in enumerate(col_of_row) if col < 0]:
    row_at = row_of_col + [start]        # (num_cols + 1,)
    via_col = [virtual] * num_cols       # the column before each column on its path
    slack = [np.inf] * num_cols
    reached = [False] * num_cols
    col = virtual
    while True:
      row = row_at[col]
      costs, u_row = rows[row], u[row]
      delta, nearest = np.inf, -1
      for j in range(num_cols):
        if not reached[j]:
          reduced = costs[j] - u_row - v[j]
          if reduced < slack[j]:
            slack[j], via_col[j] = reduced, col
          if slack[j] < delta:
            delta, nearest = slack[j], j
      u[start] += delta
      for j in range(num_cols):
        if reached[j]:
          u[row_at[j]] += delta
          v[j] -= delta
        else:
          slack[j] -= delta
      reached[nearest] = True
      col = nearest
      if row_at[col] < 0:
        break
    while col != virtual:
      row_at[col] = row_at[via_col[col]]
      col = via_col[col]
    row_of_col[:] = row_at[:num_cols]
    for j, row in enumerate(row_of_col):
      if row >= 0:
        col_of_row[row] = j
