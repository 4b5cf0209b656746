"""Every bad input is found before anything is loaded or written, and said in one line naming
it, exit status 2 (issue 34, item 7): the trainer, the evaluator, aot and the converter, each
run as a user runs it. A value of the wrong type, one out of range, a file that is missing or
is not what it should be, an unknown flag or option: stderr is one line naming the field or
flag, and the workdir (or --out) is byte for byte what it was.

Every config field's range is checked in process (``test_every_range_checked_field``); wrong
types reach the config only through absl's parser, one code path per type, so the command
lines below take one field of each type."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from alphaalign_jax import config as config_lib
from tests.tiny_run import REPO

CONFIG = "--config=configs/smollm2_135m_cpu.py"

TRAIN = [
    # a value of the wrong type, one field of each type
    ([CONFIG, "--config.train.steps=abc"], "config.train.steps"),
    ([CONFIG, "--config.mesh.data=1.5"], "config.mesh.data"),
    ([CONFIG, "--config.rollout.temperature=hot"], "config.rollout.temperature"),
    ([CONFIG, "--config.train.plot=maybe"], "config.train.plot"),
    ([CONFIG, "--config.rollout.stop_strings=5"], "config.rollout.stop_strings"),
    ([CONFIG, "--config.rft=3"], "config.rft"),
    # a value out of range
    ([CONFIG, "--config.train.steps=0"], "config.train.steps"),
    ([CONFIG, "--config.rollout.temperature=0"], "config.rollout.temperature"),
    ([CONFIG, "--config.data.harmful_fraction=2"], "config.data.harmful_fraction"),
    ([CONFIG, "--config.model.dtype=float16"], "config.model.dtype"),
    ([CONFIG, "--config.optim.b1=1.5"], "config.optim.b1"),
    ([CONFIG, "--config.mesh.data=3"], "config.mesh"),
    ([CONFIG, "--config.algo.micro_batch_size=3"], "config.algo.micro_batch_size"),
    ([CONFIG, "--config.rollout.max_new_tokens=100000"], "config.rollout.max_new_tokens"),
    ([CONFIG, "--config.optim.mu_dtype=float16"], "config.optim.mu_dtype"),
    ([CONFIG, "--config.model.lora_rank=-1"], "config.model.lora_rank"),
    ([CONFIG, "--config.model.lora_rank=4", "--config.model.lora_alpha=0"],
     "config.model.lora_alpha"),
    ([CONFIG, "--config.model.lora_rank=4", "--config.model.lora_targets=('q_proj','attn')"],
     "config.model.lora_targets"),
    # a file that is missing, or not what it should be
    (["--config=configs/nope.py"], "--config=configs/nope.py"),
    ([CONFIG, "--config.data.train_file=/nonexistent.jsonl"], "config.data.train_file"),
    ([CONFIG, "--config.data.train_file=/etc/passwd"], "config.data.train_file"),
    ([CONFIG, "--config.data.train_file={tmp}/bad_row.jsonl"], "bad_row.jsonl:2"),
    ([CONFIG, "--config.model.hf_dir=/nonexistent"], "config.model.hf_dir"),
    ([CONFIG, "--config.reward.helpfulness=classifier", "--config.reward.rm_dir=/nonexistent"],
     "config.reward.rm_dir"),
    ([CONFIG, "--config.rft.rounds=0", "--config.rft.targets_file=/nonexistent.jsonl"],
     "config.rft.targets_file"),
    ([CONFIG, "--config.reward.safety_judge=/nonexistent"], "config.reward.safety_judge"),
    # an unknown flag, option or field; a missing one
    ([CONFIG, "--bogus"], "--bogus"),
    (["--config=configs/smollm2_135m_cpu.py:bogus"], "bogus"),
    ([CONFIG, "--config.optim.lr=1"], "config.optim.lr"),
    ([CONFIG, "--config.algo.name=ppo"], "config.algo.name"),
    (["--config.train.steps=3"], "--config"),
]

EVALUATE = [
    (["--max-per-set", "abc"], "--max-per-set"),
    (["--temperature", "0"], "--temperature"),
    (["--num-samples", "0"], "--num-samples"),
    (["--max-new-tokens", "100000"], "--max-new-tokens"),
    (["--prefill", "5,x"], "--prefill"),
    (["--model", "/nonexistent"], "--model"),
    (["--run", "/nonexistent"], "--run"),
    (["--probe", "/nonexistent.jsonl"], "--probe"),
    (["--sources", "nope"], "--sources"),
    (["--bogus"], "--bogus"),
]

AOT = [
    (["--topology=v9-8"], "--topology"),
    (["--topology=v5e-3"], "--topology"),
    (["--config.train.steps=abc"], "config.train.steps"),
    (["--config.rollout.max_new_tokens=100000"], "config.rollout.max_new_tokens"),
    (["--json=/nonexistent/plan.json"], "--json"),
    (["--bogus"], "--bogus"),
]

CONVERT = [
    (["orbax-to-hf", "/nonexistent", "{out}"], "ckpt"),
    (["orbax-to-hf", "{smollm2}", "{out}"], "ckpt"),
    (["orbax-to-hf", "/nonexistent", "{out}", "--dtype", "float7"], "--dtype"),
    (["orbax-to-hf", "/nonexistent", "{out}", "--max-shard-gb", "-1"], "--max-shard-gb"),
    (["orbax-to-hf", "/nonexistent", "{out}", "--bogus"], "--bogus"),
    (["hf-to-orbax", "/nonexistent", "{out}"], "hf_dir"),
    (["hf-to-orbax", "{smollm2}", "{out}"], "not empty"),
    (["sideways", "/nonexistent", "{out}"], "direction"),
]


def snapshot(path: pathlib.Path) -> dict | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(path.rglob("*"))}


def run(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def run_all(module: str, preload: str, cases: list[list[str]], out: pathlib.Path
            ) -> list[subprocess.CompletedProcess]:
    """Each command line as ``run`` runs it, in one process (tests/cli_batch.py): the
    libraries in ``preload`` imported once."""
    batch = subprocess.run([sys.executable, "-m", "tests.cli_batch", module, preload, str(out)],
                           cwd=REPO, input=json.dumps(cases), capture_output=True, text=True)
    assert batch.returncode == 0, batch.stderr[-3000:]
    return [subprocess.CompletedProcess([module, *argv], r["returncode"], r["stdout"],
                                        r["stderr"])
            for argv, r in zip(cases, json.loads(out.read_text()), strict=True)]


def assert_one_line(result: subprocess.CompletedProcess, program: str, named: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: ") and named in lines[0], lines[0]


class Runs:
    """A program's bad command lines, each with a directory of its own that holds an earlier
    result (a workdir, an --out), run in one process; the directories' snapshots from before."""

    def __init__(self, root: pathlib.Path, module: str, preload: str, table: list, command):
        """``command(argv, directory)``: the command line of a row of ``table``."""
        self.table, self.dirs = table, [root / f"existing{i}" for i in range(len(table))]
        for directory in self.dirs:
            directory.mkdir()
            (directory / "notes.md").write_text("an earlier result\n")
        self.before = [snapshot(d) for d in self.dirs]
        self.results = run_all(module, preload, [
            command(argv, directory) for (argv, _), directory in zip(table, self.dirs,
                                                                     strict=True)],
            root / "out.json")

    def check(self, case: int, program: str) -> None:
        """One line naming what the row names, exit status 2, its directory untouched."""
        assert_one_line(self.results[case], program, self.table[case][1])
        assert snapshot(self.dirs[case]) == self.before[case]


LIBRARIES = "alphaalign_jax.trainer,transformers"


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory, smollm2_dir) -> Runs:
    root = tmp_path_factory.mktemp("train")
    (root / "bad_row.jsonl").write_text(
        json.dumps({"prompt": "Hi", "label": "benign", "source": "t", "id": "1"}) + "\n"
        + json.dumps({"prompt": "Hi", "label": "maybe", "source": "t", "id": "2"}) + "\n")
    return Runs(root, "alphaalign_jax.train", LIBRARIES, TRAIN, lambda argv, directory: [
        a.replace("{tmp}", str(root)) for a in argv] + [f"--workdir={directory}"])


@pytest.fixture(scope="module")
def evaluate_runs(tmp_path_factory, smollm2_dir) -> Runs:
    return Runs(tmp_path_factory.mktemp("evaluate"), "alphaalign_jax.evaluate", LIBRARIES,
                EVALUATE, lambda argv, directory: (
                    [] if "--model" in argv else ["--model", str(smollm2_dir)])
                + ["--out", str(directory), "--judge", "none", *argv])


@pytest.fixture(scope="module")
def convert_runs(tmp_path_factory, smollm2_dir) -> Runs:
    return Runs(tmp_path_factory.mktemp("convert"), "tools.convert_checkpoint",
                "alphaalign_jax.checkpoint,transformers", CONVERT, lambda argv, directory: [
                    a.format(out=directory, smollm2=smollm2_dir) for a in argv])


@pytest.mark.assets
@pytest.mark.parametrize("case", range(len(TRAIN)), ids=[" ".join(a[1:] or a) for a, _ in TRAIN])
@pytest.mark.slow
def test_train(case, train_runs):
    train_runs.check(case, "train")


@pytest.mark.assets
@pytest.mark.parametrize("case", range(len(EVALUATE)), ids=[" ".join(a) for a, _ in EVALUATE])
@pytest.mark.slow
def test_evaluate(case, evaluate_runs):
    evaluate_runs.check(case, "evaluate")


@pytest.mark.assets
@pytest.mark.parametrize("case", range(len(CONVERT)), ids=[" ".join(a) for a, _ in CONVERT])
@pytest.mark.slow
def test_convert(case, convert_runs):
    convert_runs.check(case, "convert_checkpoint")


@pytest.mark.assets
@pytest.mark.parametrize("argv, named", AOT, ids=[" ".join(a) for a, _ in AOT])
@pytest.mark.slow
def test_aot(argv, named, tmp_path, smollm2_dir):
    """One process each: aot points JAX at the bundled libtpu before JAX is imported."""
    argv = [CONFIG, *([] if any(a.startswith("--topology") for a in argv)
                      else ["--topology=v5e-8"]), *argv]
    if not any(a.startswith("--json") for a in argv):
        argv.append(f"--json={tmp_path / 'plan.json'}")
    result = run("alphaalign_jax.aot", argv)
    assert_one_line(result, "aot", named)
    assert list(tmp_path.iterdir()) == []


# Every field validate() checks, and a value out of its range.
OUT_OF_RANGE = {
    "model.dtype": "float16", "model.param_dtype": "int8", "mesh.data": 0, "mesh.fsdp": -2,
    "mesh.tensor": 0, "data.harmful_fraction": 1.5, "data.seed": -1, "data.restate_forms": 1.5,
    "data.validation_prompts": -1,
    "template": "no slot", "rollout.num_samples": 1, "rollout.max_prompt_len": 0,
    "rollout.max_new_tokens": 0, "rollout.temperature": 0.0, "rollout.top_p": 0.0,
    "rollout.top_k": -1, "rollout.stop_strings": ("",), "rollout.max_sampling_rounds": 0,
    "rollout.oversample": 0.5, "reward.r_format": -0.5, "reward.r_answer": -1.0,
    "reward.format_shaping": 2.0, "reward.refusal_phrases": (), "reward.refusal_markers": (" ",),
    "reward.markers_on": "harmful", "reward.helpfulness": "gpt4", "reward.rm_batch_size": 0,
    "reward.rm_max_len": 0, "algo.clip_low": 1.0, "algo.clip_high": -0.1, "algo.beta": -1.0,
    "algo.aggregation": "sum", "algo.num_updates": 0, "algo.mini_batches": 3,
    "algo.micro_batch_size": 7, "algo.logprob_chunk": 0, "algo.gamma": 1.5, "algo.lam": -0.5,
    "algo.kl_penalty": 0.1, "algo.value_clip": 0.0, "optim.learning_rate": -1.0,
    "optim.warmup_steps": -1, "optim.schedule": "linear", "optim.weight_decay": -0.1,
    "optim.b1": 1.0, "optim.b2": -0.1, "optim.eps": -1.0, "optim.max_grad_norm": -1.0,
    "optim.critic_learning_rate": -1.0, "rft.rounds": -1, "rft.targets_from": "nowhere",
    "rft.temperature": -1.0, "rft.copy_words": 0, "rft.epochs": 0, "rft.learning_rate": 0.0,
    "rft.min_kept": 0, "rft.targets_of": "harmful", "rft.targets_file": "x.jsonl",
    "train.steps": 0, "train.prompts_per_step": 0, "train.seed": -1,
    "train.checkpoint_every": 0, "train.keep_checkpoints": 0, "train.log_samples": -1, "train.select": "best",
}


@pytest.mark.parametrize("field", sorted(OUT_OF_RANGE))
def test_every_range_checked_field(field):
    """Each field with a range, out of it: a ConfigValueError naming that field."""
    c = config_lib.base_config()
    if field == "rft.targets_file":
        c.rft.rounds = 2  # a targets file replaces the sampling rounds
    *section, name = field.split(".")
    (c[section[0]] if section else c)[name] = OUT_OF_RANGE[field]
    with pytest.raises(config_lib.ConfigValueError) as error:
        config_lib.validate(c)
    assert str(error.value).startswith(f"config.{field.rsplit('.', 1)[0]}"
                                       if field.startswith("mesh.") else f"config.{field}")
    assert "\n" not in str(error.value)
