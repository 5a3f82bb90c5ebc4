"""`min_cost_assignment`: optimal, and munkres 3.0.0's (the reference's) optimum on exact ties."""

import importlib.metadata
import itertools

import numpy as np
import pytest
from scipy import optimize

from ehrnet_jax import errors
from ehrnet_jax.inference import grouping
from ehrnet_jax.inference.assignment import PAD_COST, min_cost_assignment

QUARTERS = (0.25, 0.5, 0.75, 1.0)     # values that make rounded-distance costs tie exactly

# Traced by hand with the rule in the module docstring (u: row minima after the warm start).
HAND_WORKED = {
    # Warm start: each row takes the lowest-index free column at its minimum.
    "2x2 all equal": ([[1, 1], [1, 1]], [0, 1]),
    # 6 cells, e-maxx. Warm start: row 0 takes column 2, row 1 (minimum also at column 2) is
    # left. Row 1 reaches column 2 at 0; then columns 0 and 1 tie at 100: the lowest index wins,
    # row 1 takes column 0. SciPy returns [2, 1].
    "2x3 e-maxx lowest index": ([[99.5, 99.5, -0.5], [99.5, 99.5, -0.5]], [2, 0]),
    # Padded to 3x3 with 1e10 (9 cells, e-maxx). Warm start: row 0 takes column 0, row 2 column
    # 1 (its first free minimum), row 1 (minimum at column 0) is left. Row 1 reaches column 0
    # at 0, from row 0 column 1 at 0, from row 2 nothing nearer than its own padded column at
    # 1e10 - 99.5: row 1 takes the padding (a new person). SciPy returns [1, 0, -1].
    "3x2 padded": ([[-0.5, -0.5], [99.5, 199.5], [99.5, 99.5]], [0, -1, 1]),
    # 16 cells, shortest paths. Warm start: row 0 takes column 7. Row 1 reaches column 7 at 0;
    # columns 0..6 tie at 100, all free: the last free one in the column list wins. The list
    # starts [7, 6, ..., 0]; reaching column 7 moves its last entry, 0, into its place:
    # [0, 6, 5, 4, 3, 2, 1], so row 1 takes column 1 (not 0, not 6).
    "2x8 shortest paths last free": ([[99.5] * 7 + [-0.5]] * 2, [7, 1]),
    # 18 cells, shortest paths. Warm start: row 0 takes column 0, row 2 column 1, row 1 is left.
    # Row 1 reaches column 0 at 0; from row 0, columns 1 (row 2's) and 2 (free) tie at 0: the
    # free one wins, row 0 moves to column 2 and row 1 takes column 0. SciPy, which has no warm
    # start, returns [1, 0, 2].
    "3x6 warm start": ((np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 2, 2, 1], [0, 0, 0, 0, 0, 0]])
                        * 100 - 0.5).tolist(), [2, 0, 1]),
}


@pytest.mark.parametrize("name", HAND_WORKED)
def test_hand_worked_cases(name):
  cost, want = HAND_WORKED[name]
  np.testing.assert_array_equal(min_cost_assignment(np.float32(cost)), want)


def _tied_costs(rng, num_rows, num_cols, values):
  """float32 `round(distance) * 100 - value`: rounded distances 0..3, one value per row."""
  rounded = rng.integers(0, 4, (num_rows, num_cols)).astype(np.float32)
  value = np.asarray(values, np.float32)[rng.integers(0, len(values), num_rows)]
  return rounded * np.float32(100) - value[:, None]


def _random_set(values, seed, max_size=30, per_shape=4):
  """Seeded tied matrices with N = G, N < G and N > G for N = 1..max_size."""
  rng = np.random.default_rng(seed)
  costs = []
  for num_rows in range(1, max_size + 1):
    for _ in range(per_shape):
      shapes = [num_rows, rng.integers(num_rows, max_size + 1), rng.integers(1, num_rows + 1)]
      costs += [_tied_costs(rng, num_rows, int(num_cols), values) for num_cols in shapes]
  return costs


def _padded(cost):
  """As the reference pads before calling munkres: 1e10 columns up to a square, float64."""
  num_rows, num_cols = cost.shape
  if num_rows <= num_cols:
    return cost.astype(np.float64)
  return np.concatenate([cost, np.zeros((num_rows, num_rows - num_cols)) + PAD_COST], axis=1)


def _check_assignment(cost, assigned):
  """A complete assignment: min(N, G) rows on distinct columns, the others -1."""
  matched = assigned[assigned >= 0]
  assert len(matched) == min(cost.shape) == len(set(matched.tolist()))
  assert assigned.max(initial=-1) < cost.shape[1]


def _total(cost, assigned):
  """The matched rows' cost (float64 sum; exact for these quarter-integer costs)."""
  rows = np.flatnonzero(assigned >= 0)
  return cost[rows, assigned[rows]].astype(np.float64).sum()


def _padding_columns(assigned, num_cols):
  """Distinct padded columns for the unassigned rows (any order: they all cost PAD_COST)."""
  columns = np.zeros(len(assigned), np.int64)
  columns[assigned < 0] = num_cols + np.arange((assigned < 0).sum())
  return columns


def test_optimal_against_exhaustive_search():
  """N, G <= 6: the padded total equals the minimum over every injective row -> column map."""
  rng = np.random.default_rng(0)
  for num_rows, num_cols in itertools.product(range(1, 7), repeat=2):
    width = max(num_rows, num_cols)
    maps = np.array(list(itertools.permutations(range(width), num_rows)))   # (M, N)
    for _ in range(6):
      cost = _tied_costs(rng, num_rows, num_cols, QUARTERS)
      padded = _padded(cost)
      assigned = min_cost_assignment(cost)
      _check_assignment(cost, assigned)
      ours = padded[np.arange(num_rows), np.where(assigned >= 0, assigned,
                                                  _padding_columns(assigned, num_cols))].sum()
      # Exact: quarter-integer costs, totals below 2^53 / 4.
      assert ours == padded[np.arange(num_rows), maps].sum(1).min(), cost.tolist()


def test_optimal_against_scipy_up_to_30():
  """Sizes 1..30: the same optimal total as SciPy's solver (the assignments may differ)."""
  for cost in _random_set(QUARTERS, seed=1):
    assigned = min_cost_assignment(cost)
    _check_assignment(cost, assigned)
    rows, cols = optimize.linear_sum_assignment(cost)
    # Exact: quarter-integer costs, sums far below 2^53 / 4.
    assert _total(cost, assigned) == cost[rows, cols].astype(np.float64).sum(), cost.tolist()


def _munkres_300():
  """munkres.Munkres of munkres 3.0.0, the reference's solver, or a skip."""
  try:
    version = importlib.metadata.version("munkres")
    import munkres  # pylint: disable=import-outside-toplevel
  except (ImportError, importlib.metadata.PackageNotFoundError):
    pytest.skip("munkres 3.0.0 (the reference's solver, not a dependency) is not installed; "
                "pip install munkres==3.0.0 to compare with it")
  if version != "3.0.0":
    pytest.skip(f"munkres {version} is installed; the reference's choice is that of 3.0.0")
  return munkres.Munkres()


def _munkres_assignment(solver, cost):
  """The reference's call: pad, `Munkres().compute`, a padded column means 'none' (-1)."""
  assigned = np.full(cost.shape[0], -1)
  for row, col in solver.compute(_padded(cost)):
    if col < cost.shape[1]:
      assigned[row] = col
  return assigned


@pytest.mark.parametrize("values", [QUARTERS, "uniform"])
def test_same_optimum_as_munkres_300(values):
  """Tied matrices of sizes 1..30: exactly munkres 3.0.0's assignment. 'uniform' values (float32
  in 0.1..1) add float near-ties, decided by the float64 rounding of both."""
  solver = _munkres_300()
  if values == "uniform":
    values = np.random.default_rng(2).uniform(0.1, 1.0, 64)
  costs = _random_set(values, seed=3)
  differs_from_scipy = 0
  for cost in costs:
    want = _munkres_assignment(solver, cost)
    np.testing.assert_array_equal(min_cost_assignment(cost), want, err_msg=str(cost.tolist()))
    rows, cols = optimize.linear_sum_assignment(cost)
    differs_from_scipy += not np.array_equal(cols, want[rows])
  # The set exercises ties: SciPy picks another optimum on a good share of it (18-33% measured).
  assert differs_from_scipy > len(costs) / 10


def test_match_by_tag_breaks_ties_as_munkres():
  """Three people (tags 0, 1.4, 0.7); two candidates near 0.7 cost [[99.5, 99.5, -0.5]] * 2:
  the first joins person 2, the second (tag distance 0.71 < 1) person 0, not person 1."""
  xy = np.array([[[0, 0], [1, 0], [2, 0]], [[3, 0], [4, 0], [0, 0]]])
  values = np.float32([[0.9, 0.9, 0.9], [0.5, 0.5, -np.inf]])
  tags = np.float32([[0.0, 1.4, 0.7], [0.7, 0.71, 0.0]])[..., None]
  people = grouping.match_by_tag(grouping.Candidates(xy, values, tags), grouping_order=(0, 1))
  want = np.zeros((3, 2, 4), np.float32)
  want[:, 0] = [[0, 0, 0.9, 0.0], [1, 0, 0.9, 1.4], [2, 0, 0.9, 0.7]]
  want[0, 1] = [4, 0, 0.5, 0.71]
  want[2, 1] = [3, 0, 0.5, 0.7]
  np.testing.assert_array_equal(people, want)


def test_edges_and_bad_costs():
  np.testing.assert_array_equal(min_cost_assignment(np.zeros((0, 3))), np.zeros(0))
  np.testing.assert_array_equal(min_cost_assignment(np.zeros((2, 0))), [-1, -1])
  with pytest.raises(errors.UserError, match="assignment cost: expected a finite 2-D array"):
    min_cost_assignment(np.float32([[1.0, np.nan]]))
  with pytest.raises(errors.UserError, match="shape \\(3,\\)"):
    min_cost_assignment(np.ones(3))
