"""Pre-registered protocols: a sweep's runs checked against the committed protocol, and claims judged across
a free choice (hand-made run records, a real git repository in a temporary folder)."""

import subprocess
import textwrap
from pathlib import Path

import pytest

from bnrepro.report.claims import CLAIMS_FILE, Verdict, evaluate, load_claims
from bnrepro.report.protocol import ProtocolFileError, check_protocol, find_protocol, load_preregistration
from bnrepro.report.runs import RunRecord
from bnrepro.report.tables import across_table

PROTOCOL = """
protocol: lr_grid
sweep: lr_grid
command: make reproduce-lr-grid
question: Does BN win at every rate?
grid:
  model.base_lr: [0.1, 0.5]
  norm: [bn, none]
  seed: [0, 1, 2]
fixed:
  trainer.max_steps: 1000
  data.binarize: "true"
across: model.base_lr
claims: [final_accuracy]
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository whose second commit registers protocols/lr_grid.yaml; the first predates it."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.org")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "README").write_text("before\n")
    git(tmp_path, "add", "README")
    git(tmp_path, "commit", "-qm", "before the protocol")
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "lr_grid.yaml").write_text(PROTOCOL)
    git(tmp_path, "add", "protocols")
    git(tmp_path, "commit", "-qm", "register")
    return tmp_path


def head(repo: Path, back: int = 0) -> str:
    return git(repo, "rev-parse", f"HEAD~{back}")


def run(lr, norm, seed, commit, final=None, steps="1000", dirty="False", status="FINISHED") -> RunRecord:
    final = final if final is not None else (0.95 if norm == "bn" else 0.90) + seed / 1000
    tags = {"norm": norm, "seed": str(seed), "experiment": "mnist_fig1", "data": "mnist_mini"}
    tags |= {"mlflow.source.git.commit": commit, "bnrepro.git_dirty": dirty}
    params = {"model.base_lr": str(lr), "trainer.max_steps": steps, "data.binarize": "True", "eval_examples": "10000"}
    history = {"val/acc": [(500, 0.5), (1000, final)]}
    return RunRecord(f"{lr}-{norm}-{seed}", "", status, tags, params, history)


def full_grid(commit: str) -> list[RunRecord]:
    return [run(lr, norm, seed, commit) for lr in (0.1, 0.5) for norm in ("bn", "none") for seed in range(3)]


def checked(repo: Path, runs: list[RunRecord], judged=("final_accuracy",)):
    path, plan = find_protocol("lr_grid", repo / "protocols")
    return check_protocol(path, plan, runs, list(judged))


def test_a_sweep_run_as_registered_has_no_deviations(repo):
    check = checked(repo, full_grid(head(repo)))
    assert check.deviations == []
    assert check.registration.first_commit == head(repo) and check.run_commits == [head(repo)]


def test_a_missing_and_an_extra_job_are_deviations(repo):
    runs = full_grid(head(repo))[1:] + [run(1.0, "bn", 0, head(repo))]
    deviations = checked(repo, runs).deviations
    assert "1 registered job(s) did not run: model.base_lr=0.1,norm=bn,seed=0" in deviations
    assert "1 job(s) ran that the protocol does not register: model.base_lr=1,norm=bn,seed=0" in deviations


def test_a_job_run_twice_is_a_deviation(repo):
    runs = full_grid(head(repo)) + [run(0.5, "none", 2, head(repo))]
    assert checked(repo, runs).deviations == ["1 job(s) ran more than once: model.base_lr=0.5,norm=none,seed=2"]


def test_a_run_off_the_fixed_configuration_is_a_deviation_naming_key_value_and_registered_value(repo):
    runs = full_grid(head(repo))
    runs[0] = run(0.1, "bn", 0, head(repo), steps="200")
    assert checked(repo, runs).deviations == ["trainer.max_steps: 1 run(s) have 200, the protocol fixes 1000"]


def test_runs_at_a_commit_older_than_the_registration_are_deviations(repo):
    deviations = checked(repo, full_grid(head(repo, back=1))).deviations
    assert len(deviations) == 1 and "does not contain the protocol's registered version" in deviations[0]


def test_a_protocol_changed_after_its_runs_is_a_deviation(repo):
    commit = head(repo)
    (repo / "protocols" / "lr_grid.yaml").write_text(PROTOCOL.replace("1000", "2000"))
    git(repo, "commit", "-qam", "move the goalposts")
    deviations = checked(repo, full_grid(commit)).deviations
    assert any("fixed or changed after them" in deviation for deviation in deviations)


def test_an_uncommitted_protocol_is_a_deviation(tmp_path):
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "lr_grid.yaml").write_text(PROTOCOL)
    path, plan = find_protocol("lr_grid", tmp_path / "protocols")
    deviations = check_protocol(path, plan, full_grid("abc"), ["final_accuracy"]).deviations
    assert deviations[0].endswith("is not committed: nothing shows it was fixed before its runs")


def test_runs_from_a_dirty_tree_and_unfinished_runs_are_deviations(repo):
    runs = full_grid(head(repo))
    runs[0] = run(0.1, "bn", 0, head(repo), dirty="True")
    runs[1] = run(0.1, "bn", 1, head(repo), status="KILLED")
    assert checked(repo, runs).deviations == [
        "1 run(s) ran from a tree with uncommitted changes",
        "1 run(s) ended KILLED",
    ]


def test_claims_judged_beyond_the_registered_ones_are_labelled_exploratory(repo):
    deviations = checked(repo, full_grid(head(repo)), judged=["other_claim"]).deviations
    assert deviations == [
        "judged but not registered (exploratory): other_claim",
        "registered but not judged: final_accuracy",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PROTOCOL.replace("across: model.base_lr", "across: optim.lr"), "across=optim.lr is not a key of the grid"),
        (PROTOCOL.replace("claims:", "colour: red\nclaims:"), "colour"),
    ],
)
def test_a_malformed_protocol_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProtocolFileError, match=message) as error:
        load_preregistration(path)
    assert str(path) in str(error.value)


FINAL_ACCURACY = """
claims:
  - id: final_accuracy
    paper: "BN ends higher."
    experiment: mnist_fig1
    metric: {statistic: final}
    comparison: ordering
    better: higher
    configurations: [{norm: bn}, {norm: none}]
"""


def test_across_judges_every_claim_at_every_value_in_one_family(tmp_path):
    (tmp_path / "claims.yaml").write_text(textwrap.dedent(FINAL_ACCURACY))
    registry = load_claims(tmp_path / "claims.yaml")
    runs = full_grid("abc")
    runs = [r for r in runs if r.params["model.base_lr"] == "0.1"] + [
        run(0.5, norm, seed, "abc", final=0.9 + seed / 1000) for norm in ("bn", "none") for seed in range(3)
    ]  # at 0.5 both nets end at the same accuracy
    results = evaluate(registry, runs, across="model.base_lr")
    verdicts = {result.claim.id: result.verdict for result in results}
    assert verdicts == {
        "final_accuracy@model.base_lr=0.1": Verdict.PASS,
        "final_accuracy@model.base_lr=0.5": Verdict.INCONCLUSIVE,
    }
    assert {result.correction for result in results} == {"Holm-Bonferroni over 2 claims"}
    table = across_table(results, "model.base_lr")
    assert "| `final_accuracy` | PASS | INCONCLUSIVE | 1 of 2 |" in table


def test_the_repositorys_protocols_are_readable_and_name_registered_claims():
    known = {claim.id for claim in load_claims(CLAIMS_FILE).claims}
    paths = sorted((Path(__file__).resolve().parents[1] / "protocols").glob("*.yaml"))
    assert paths
    for path in paths:
        plan = load_preregistration(path)
        assert set(plan.claims) <= known, path
