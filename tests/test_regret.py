"""Exact values, segment statistics, preference models, reward learning and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pbrl.envs.delivery import TRUE_WEIGHTS, Board, random_board
from pbrl.regret import mdp
from pbrl.regret.cli import main
from pbrl.regret.learning import (
    PairData,
    PolicyLibrary,
    fit_reward,
    kfold,
    mean_scaled_return,
    predict_logits,
)
from pbrl.regret.preference import (
    accuracy,
    compare,
    fit_scale,
    log_likelihood,
    prob_second,
    sigmoid,
    utility,
)

UP, DOWN, LEFT, RIGHT = range(4)
CORRIDOR = Board([[0, 0, 0, 1]])  # goal at the right end
BOARD = Path(__file__).parents[1] / "envs" / "boards" / "small.json"


def segment(tables, start, moves):
    return mdp.encode_segments(tables, np.array([start]), np.array([moves]))


# -- value iteration -------------------------------------------------------------------------
def test_value_iteration_on_a_corridor_by_hand() -> None:
    sol = mdp.value_iteration(CORRIDOR.tables)
    np.testing.assert_allclose(sol.V, [48, 49, 50, 0])
    # from (0, 1): up/down blocked -1 + 49, left -1 + 48, right -1 + 50
    np.testing.assert_allclose(sol.Q[1, :4], [48, 48, 47, 49])
    np.testing.assert_allclose(sol.A[1, :4], [-1, -1, -2, 0])
    assert sol.policy[:3].tolist() == [RIGHT, RIGHT, RIGHT]


def test_value_iteration_with_mud_sheep_and_discount() -> None:
    tables = Board([[3, 0, 6, 1]]).tables  # sheep, blank, mud, goal
    sol = mdp.value_iteration(tables)
    np.testing.assert_allclose(sol.V, [0, 48, 50, 0])  # (0,1): mud -2 then goal +50
    gamma = 0.9
    sol = mdp.value_iteration(tables, gamma=gamma)
    np.testing.assert_allclose(sol.V, [0, -2 + gamma * 50, 50, 0])


def test_discounted_solution_matches_long_value_iteration() -> None:
    tables = random_board(np.random.default_rng(5)).tables
    w = np.random.default_rng(6).standard_normal(6)  # arbitrary reward, loops allowed
    exact = mdp.value_iteration(tables, w, gamma=0.95)
    r = mdp.rewards(tables, w)[:, :4]
    v = np.zeros(tables.n_states)
    for _ in range(2000):
        v = (r + 0.95 * v[tables.next_state[:, :4]]).max(axis=1)
    np.testing.assert_allclose(exact.V, v, atol=1e-8)


def test_uniform_policy_value_by_hand() -> None:
    # random walk on [a, b, goal]: V_a = -1 + (3 V_a + V_b) / 4, V_b = (2 (V_b - 1) + V_a - 1 + 50) / 4
    v = mdp.policy_values(Board([[0, 0, 1]]).tables, mdp.uniform_policy(Board([[0, 0, 1]]).tables))
    np.testing.assert_allclose(v, [39, 43, 0])


def test_policy_that_never_terminates_has_no_undiscounted_value() -> None:
    tables = CORRIDOR.tables
    always_left = np.full(tables.n_states, LEFT)
    with pytest.raises(mdp.PlanningError, match="gamma < 1"):
        mdp.policy_values(tables, always_left)
    v = mdp.policy_values(tables, always_left, gamma=0.5)
    np.testing.assert_allclose(v[0], -1 / (1 - 0.5))


def test_undiscounted_values_without_exit_raise_clear_error() -> None:
    tables = Board([[0, 2, 1]]).tables  # (0, 0) is walled off by a house
    with pytest.raises(mdp.PlanningError, match=r"cells \[\(0, 0\)\] cannot reach.*gamma < 1"):
        mdp.value_iteration(tables)
    sol = mdp.value_iteration(tables, gamma=0.999)
    np.testing.assert_allclose(sol.V[0], -1 / (1 - 0.999))


def test_positive_reward_loop_raises_with_gamma_one() -> None:
    w = TRUE_WEIGHTS.copy()
    w[0] = 1.0  # gas pays: wandering forever beats delivering
    with pytest.raises(mdp.PlanningError, match="positive return"):
        mdp.value_iteration(CORRIDOR.tables, w)


# -- segments --------------------------------------------------------------------------------
def test_segment_stats_by_hand() -> None:
    tables = CORRIDOR.tables
    straight = mdp.segment_stats(tables, segment(tables, (0, 0), [(0, 1), (0, 1), (0, 1)]))
    assert straight.partial_return[0] == 48 and straight.regret[0] == 0
    assert straight.start_value[0] == 48 and straight.end_value[0] == 0
    detour = mdp.segment_stats(tables, segment(tables, (0, 0), [(0, -1), (0, 1), (0, 1)]))
    assert detour.partial_return[0] == -3 and detour.end_value[0] == 50
    assert detour.regret[0] == pytest.approx(48 - (-3 + 50))
    # the episode ends at step 2: the last move is (0, 0), "no move"
    early = mdp.segment_stats(tables, segment(tables, (0, 1), [(0, 1), (0, 1), (0, 0)]))
    assert early.partial_return[0] == 49 and early.regret[0] == 0


@pytest.mark.parametrize(
    ("start", "moves", "message"),
    [
        ((0, 4), [(0, 1)], "off the 1x4 board"),
        ((0, -1), [(0, 1)], "off the"),
        ((0, 0), [(1, 1)], r"move 0 is \(1, 1\)"),
        ((0, 0), [(0, 1), (0, 0)], "not terminal"),
    ],
)
def test_bad_segments_name_the_problem(start, moves, message) -> None:
    with pytest.raises(mdp.SegmentError, match=message):
        segment(CORRIDOR.tables, start, moves)


def test_segment_starting_on_a_house_is_rejected() -> None:
    with pytest.raises(mdp.SegmentError, match="house"):
        segment(Board([[2, 0, 1]]).tables, (0, 0), [(0, 1)])


@pytest.mark.parametrize("seed", range(3))
def test_regret_equals_minus_sum_of_optimal_advantages(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tables = random_board(rng).tables
    starts, moves = mdp.sample_segments(tables, 500, 3, rng)
    stats = mdp.segment_stats(tables, mdp.encode_segments(tables, starts, moves))
    np.testing.assert_allclose(stats.regret, stats.regret_advantage, atol=1e-9)
    assert (stats.regret >= -1e-9).all() and (stats.regret > 0).any()
    np.testing.assert_allclose(
        stats.regret, stats.start_value - stats.partial_return - stats.end_value, atol=1e-9
    )


def test_same_start_and_end_means_both_models_agree() -> None:
    rng = np.random.default_rng(0)
    tables = random_board(rng).tables
    starts, moves = mdp.sample_segments(tables, 4000, 3, rng)
    segs = mdp.encode_segments(tables, starts, moves)
    stats = mdp.segment_stats(tables, segs)
    key = segs.states[:, 0] * tables.n_states + segs.states[:, -1]
    first, second = [], []
    for k in np.unique(key):
        members = np.flatnonzero(key == k)
        first += list(members[:-1])
        second += list(members[1:])
    first, second = np.array(first), np.array(second)
    assert len(first) > 100
    pr = utility(stats, "partial_return")
    reg = utility(stats, "regret")
    np.testing.assert_array_equal(compare(pr[first], pr[second]), compare(reg[first], reg[second]))
    np.testing.assert_allclose(
        prob_second(pr[first], pr[second], 0.7), prob_second(reg[first], reg[second], 0.7)
    )
    # and different start/end states do disagree somewhere: the test can fail
    a, b = np.arange(0, 4000, 2), np.arange(1, 4000, 2)
    assert (compare(pr[a], pr[b]) != compare(reg[a], reg[b])).any()


# -- preference models -----------------------------------------------------------------------
def test_preference_probabilities_and_labels() -> None:
    u1, u2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(prob_second(u1, u2, 2.0), sigmoid(np.array([2.0, 0.0, -4.0])))
    np.testing.assert_array_equal(prob_second(u1, u2, np.inf), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(compare(u1, u2), [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="Generator"):
        compare(u1, u2, 1.0)
    big1, big2 = np.zeros(20000), np.full(20000, 0.5)
    a = compare(big1, big2, 2.0, np.random.default_rng(1))
    b = compare(big1, big2, 2.0, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.mean() == pytest.approx(sigmoid(np.array(1.0)), abs=0.01)


def test_log_likelihood_accuracy_and_scale_fit() -> None:
    logits = np.array([2.0, -1.0, 0.0, 3.0])
    labels = np.array([0.0, 1.0, 0.5, 1.0])
    expected = [np.log(sigmoid(2.0)), np.log(sigmoid(1.0)), np.log(0.5), np.log(sigmoid(-3.0))]
    np.testing.assert_allclose(log_likelihood(logits, labels), expected)
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, 20000)
    y = (rng.random(x.size) < sigmoid(-0.7 * x)).astype(float)  # label 1 = second preferred
    assert fit_scale(x, y) == pytest.approx(0.7, abs=0.05)
    assert fit_scale(x, 1 - y) == 0.0  # anti-correlated utilities get scale 0
    assert fit_scale(x, (x < 0).astype(float)) == 1e3  # separable: the cap


# -- successor features and learning ---------------------------------------------------------
def test_soft_max_over_library_approaches_optimal_values_as_temperature_falls() -> None:
    rng = np.random.default_rng(2)
    tables = random_board(rng, rows=6, cols=6).tables
    gamma = 0.999
    optimal = mdp.value_iteration(tables, TRUE_WEIGHTS, gamma)
    others, _ = mdp.policy_iteration(tables, rng.standard_normal((30, 6)), gamma)
    policies = np.vstack([optimal.policy[None], others])
    library = PolicyLibrary(mdp.successor_features(tables, policies, gamma), policies, gamma, 0)
    temperatures = (10, 1, 0.1, 1e-3, 1e-5)
    errors = [np.abs(library.soft_values(TRUE_WEIGHTS, t) - optimal.V).max() for t in temperatures]
    assert errors[0] > 1.0
    assert all(a >= b for a, b in zip(errors, errors[1:], strict=False))
    assert errors[3] < 1e-3  # the paper's T = 0.001
    assert errors[-1] < 1e-9


def test_library_excludes_every_true_optimal_policy() -> None:
    rng = np.random.default_rng(0)
    tables = Board([[0, 0, 0, 1], [0, 0, 0, 0]]).tables  # few policies: optimal ones get sampled
    library = PolicyLibrary.build(tables, rng, n_rewards=300)
    v_star = mdp.value_iteration(tables, TRUE_WEIGHTS, 0.999).V
    own = library.psi @ TRUE_WEIGHTS
    starts = tables.start_states
    assert library.n_removed > 0
    assert (np.abs(own[:, starts] - v_star[starts]).max(axis=1) > 1e-6).all()


def _labeled_pairs(
    board: Board, n: int, model: str, seed: int, beta: float | None = None
) -> tuple[PairData, tuple]:
    from pbrl.teachers.regret import DeliveryTeacher

    rng = np.random.default_rng(seed)
    starts, moves = mdp.sample_segments(board.tables, 2 * n, 3, rng)
    starts, moves = starts.reshape(n, 2, 2), moves.reshape(n, 2, 3, 2)
    teacher = DeliveryTeacher(board, model=model, beta=beta, rng=rng)
    labels = teacher.label_pairs(starts, moves)
    return PairData.from_arrays(board.tables, starts, moves, labels), (starts, moves, labels)


# Noiseless regret labels identify the reward; noiseless partial-return labels do not (they
# only order returns: a coin can end up worth more than the gas it costs), so partial
# return gets the noisy labels whose frequencies reveal the reward's proportions.
@pytest.mark.parametrize(
    ("model", "n", "beta"), [("regret", 300, None), ("partial_return", 1000, 1.0)]
)
def test_learning_recovers_a_near_optimal_reward(model: str, n: int, beta: float | None) -> None:
    board = Board.load(BOARD)
    data, _ = _labeled_pairs(board, n, model, seed=0, beta=beta)
    library = PolicyLibrary.build(board.tables, np.random.default_rng(0))
    fit = fit_reward(data, model, library, iterations=300)
    assert fit.loss < np.log(2) - 0.1  # better than the all-zero start
    assert mean_scaled_return(board.tables, fit.w) > 0.9
    # the library lacks the optimal policies, so regret logits are approximate: ~0.8 here
    assert accuracy(predict_logits(fit.w, data, model, library), data.labels) > 0.75


def test_regret_logits_with_the_optimal_policy_in_the_library_are_exact() -> None:
    board = Board.load(BOARD)
    data, _ = _labeled_pairs(board, 300, "regret", seed=1)
    library = PolicyLibrary.build(board.tables, np.random.default_rng(0), n_rewards=20)
    optimal = mdp.value_iteration(board.tables, TRUE_WEIGHTS, library.gamma).policy
    policies = np.vstack([optimal[None], library.policies])
    full = PolicyLibrary(
        mdp.successor_features(board.tables, policies, library.gamma), policies, library.gamma, 0
    )
    logits = predict_logits(TRUE_WEIGHTS, data, "regret", full)
    assert accuracy(logits, data.labels) == 1.0
    # ties are near 0, not exactly: ψ is discounted (γ = 0.999), the segment's φ sum is not
    assert (np.abs(logits[data.labels == 0.5]) < 0.5).all()
    assert accuracy(predict_logits(TRUE_WEIGHTS, data, "partial_return"), data.labels) < 0.95


def test_mean_scaled_return_endpoints() -> None:
    tables = random_board(np.random.default_rng(4)).tables
    assert mean_scaled_return(tables, TRUE_WEIGHTS) == pytest.approx(1.0)
    assert mean_scaled_return(tables, 3 * TRUE_WEIGHTS) == pytest.approx(1.0)
    assert mean_scaled_return(tables, -TRUE_WEIGHTS) < 0.0


def test_kfold_holds_each_pair_out_once() -> None:
    folds = kfold(23, 5, np.random.default_rng(0))
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    with pytest.raises(ValueError, match="folds"):
        kfold(3, 5, np.random.default_rng(0))


# -- command line ----------------------------------------------------------------------------


def _write_pairs(path: Path, model: str = "regret", n: int = 120, seed: int = 0) -> tuple:
    _, (starts, moves, labels) = _labeled_pairs(Board.load(BOARD), n, model, seed)
    np.savez(path, starts=starts, moves=moves, labels=labels)
    return starts, moves, labels


def test_cli_fit_writes_both_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pairs = tmp_path / "pairs.npz"
    _write_pairs(pairs, n=400)
    argv = ["fit", "--board", str(BOARD), "--pairs", str(pairs), "--folds", "4"]
    assert main([*argv, "--iterations", "30", "--library-size", "20"]) == 0
    out = json.loads((tmp_path / "pairs.regret_fit.json").read_text())
    printed = capsys.readouterr().out
    assert "| regret |" in printed and "| partial_return |" in printed
    reg, pr = out["models"]["regret"], out["models"]["partial_return"]
    # noiseless regret labels: the regret model with the true reward explains them better
    assert (
        reg["true_reward"]["heldout_log_likelihood"] > pr["true_reward"]["heldout_log_likelihood"]
    )
    assert reg["true_reward"]["heldout_accuracy"] == 1.0
    assert len(reg["true_reward"]["scale_per_fold"]) == 4
    assert len(reg["learned_reward"]["w_per_fold"]) == 4
    assert np.isfinite(reg["learned_reward"]["mean_scaled_return"])
    assert out["n_pairs"] == 400


def test_cli_fit_one_model_and_custom_out(tmp_path: Path) -> None:
    pairs = tmp_path / "p.npz"
    _write_pairs(pairs, n=40)
    out = tmp_path / "sub" / "fit.json"
    argv = ["fit", "--board", str(BOARD), "--pairs", str(pairs), "--model", "partial_return"]
    assert main([*argv, "--folds", "2", "--iterations", "5", "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["models"]) == ["partial_return"]


def test_cli_stats(tmp_path: Path) -> None:
    pairs = tmp_path / "p.npz"
    starts, moves, labels = _write_pairs(pairs, n=50)
    out = tmp_path / "stats.npz"
    assert main(["stats", "--board", str(BOARD), "--pairs", str(pairs), "--out", str(out)]) == 0
    tables = Board.load(BOARD).tables
    first = mdp.segment_stats(tables, mdp.encode_segments(tables, starts[:, 0], moves[:, 0]))
    second = mdp.segment_stats(tables, mdp.encode_segments(tables, starts[:, 1], moves[:, 1]))
    with np.load(out) as f:
        for key in ("partial_return", "start_value", "end_value", "regret"):
            np.testing.assert_allclose(f[key], getattr(second, key) - getattr(first, key))
        np.testing.assert_array_equal(f["labels"], labels)


def _bad_pairs(tmp_path: Path, case: str) -> Path:
    starts, moves, labels = _write_pairs(tmp_path / "good.npz", n=10)
    path = tmp_path / "bad.npz"
    if case == "missing":
        return tmp_path / "nope.npz"
    if case == "shape":
        np.savez(path, starts=starts[:, 0], moves=moves, labels=labels)
    elif case == "labels":
        np.savez(path, starts=starts, moves=moves, labels=np.where(labels == 1, 2.0, labels))
    elif case == "off_board":
        starts[3, 1] = (9, 9)
        np.savez(path, starts=starts, moves=moves, labels=labels)
    elif case == "house":
        starts[2, 0] = (1, 1)  # the house of small.json
        np.savez(path, starts=starts, moves=moves, labels=labels)
    elif case == "keys":
        np.savez(path, starts=starts, labels=labels)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("shape", r"starts must have shape \(N=10, 2, 2\)"),
        ("labels", r"labels \[2.0\] are invalid"),
        ("off_board", "segment 7 starts at \\(9, 9\\), off the 4x5 board"),
        ("house", "segment 4 starts at \\(1, 1\\), which is a house"),
        ("keys", r"lacks array\(s\) \['moves'\]"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str
) -> None:
    pairs = _bad_pairs(tmp_path, case)
    for argv in (
        ["fit", "--board", str(BOARD), "--pairs", str(pairs), "--folds", "2", "--iterations", "1"],
        ["stats", "--board", str(BOARD), "--pairs", str(pairs), "--out", str(tmp_path / "s.npz")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert __import__("re").search(message, err), err


def test_cli_subprocess_missing_board_no_traceback(tmp_path: Path) -> None:
    pairs = tmp_path / "p.npz"
    _write_pairs(pairs, n=10)
    result = subprocess.run(
        [sys.executable, "-m", "pbrl.regret", "fit", "--board", str(tmp_path / "no.json")]
        + ["--pairs", str(pairs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "board file" in result.stderr and "does not exist" in result.stderr


def test_cli_pairs_writes_what_fit_and_stats_read(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``pairs`` makes PAIRS.npz (the scripted DeliveryTeacher's labels); a board may be a
    plain list of rows or {"name", "grid"}."""
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(Board.load(BOARD).grid.tolist()))  # the list-of-rows form
    for board, model in ((BOARD, "regret"), (rows, "partial_return")):
        pairs = tmp_path / f"{model}.npz"
        argv = ["pairs", "--board", str(board), "--num", "40", "--model", model]
        assert main([*argv, "--out", str(pairs), "--seed", "3"]) == 0
        assert f"wrote {pairs}: 40 pairs of 3-step segments" in capsys.readouterr().out
        _, (starts, moves, labels) = _labeled_pairs(Board.load(BOARD), 40, model, seed=3)
        with np.load(pairs) as f:
            np.testing.assert_array_equal(f["starts"], starts)
            np.testing.assert_array_equal(f["moves"], moves)
            np.testing.assert_array_equal(f["labels"], labels)
        fit = ["fit", "--board", str(board), "--pairs", str(pairs), "--folds", "2"]
        assert main([*fit, "--iterations", "5", "--library-size", "10"]) == 0
        stats = ["stats", "--board", str(board), "--pairs", str(pairs)]
        assert main([*stats, "--out", str(tmp_path / "stats")]) == 0  # .npz is added
        assert (tmp_path / "stats.npz").is_file()
    sampled = tmp_path / "sampled.npz"
    argv = ["pairs", "--board", str(BOARD), "--num", "300", "--beta", "0.5"]
    assert main([*argv, "--out", str(sampled)]) == 0
    with np.load(sampled) as f:
        assert set(np.unique(f["labels"])) == {0.0, 1.0}  # sampled: no ties


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--library-size", "0"], "--library-size 0 is invalid: use at least 1"),
        (["--learning-rate", "nan"], "--learning-rate nan is invalid: use a finite"),
        (["--learning-rate", "-1"], "--learning-rate -1 is invalid"),
        (["--temperature", "0"], "--temperature 0 is invalid: use a finite soft-max"),
        (["--temperature", "inf"], "--temperature inf is invalid"),
        (["--iterations", "0"], "--iterations 0 is invalid"),
        (["--gamma", "0"], "--gamma 0 is invalid: use 0 < gamma <= 1"),
        (["--gamma", "1.5"], "--gamma 1.5 is invalid"),
        (["--folds", "x"], "argument --folds: invalid int value: 'x' \\(see"),
        (["--library-prior", "cauchy"], "argument --library-prior: invalid choice"),
        (["--out", "{tmp}/a_file/fit.json"], "a_file is a file, not a folder"),
        (["--out", "{tmp}"], "is a folder: pass a file path"),
    ],
)
def test_cli_fit_arguments_are_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    pairs = tmp_path / "p.npz"
    _write_pairs(pairs, n=10)
    (tmp_path / "a_file").write_text("x")
    argv = ["fit", "--board", str(BOARD), "--pairs", str(pairs), "--folds", "2"]
    argv += ["--iterations", "1", *[a.format(tmp=tmp_path) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "p.regret_fit.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num", "0"], "--num 0 is invalid: use at least 1 pair"),
        (["--segment-length", "0"], "--segment-length 0 is invalid"),
        (["--beta", "-1"], "--beta -1 is invalid: use a finite beta > 0"),
        (["--model", "both"], "argument --model: invalid choice"),
        ([], "the following arguments are required: --num"),
    ],
)
def test_cli_pairs_arguments_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    argv = ["pairs", "--board", str(BOARD), "--out", str(tmp_path / "p.npz"), *args]
    if args and args[0] != "--num":
        argv += ["--num", "5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "p.npz").exists()


def test_cli_unwritable_out_folder_is_one_line(tmp_path: Path) -> None:
    """A read-only output folder: refused before the fit, one line, exit 2 (root too)."""
    import os
    import shutil

    pairs = tmp_path / "p.npz"
    _write_pairs(pairs, n=10)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root ignores permissions unless it gives up that power
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions do not apply")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "pbrl.regret", "fit", "--board", str(BOARD)]
            + ["--pairs", str(pairs), "--out", str(locked / "fit.json")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "locked is not writable" in result.stderr
