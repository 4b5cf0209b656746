"""AlphaAlign RL training (GRPO and its variants, or PPO): the main job's command line.

    python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py[:ppo] --workdir=runs/smollm2 \
        [--config.train.steps=20 --config.optim.learning_rate=1e-5 ...]

The trainer (trainer.py) runs the warm start and the RL steps; after the last step this
module evaluates and exports the run's result when the config asks (``finish``). Every error
of what the user gave is one line and exit status 2; a condition of the run (a full disk, a
non-finite loss, a preemption) is one line too.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from alphaalign_jax import assets
from alphaalign_jax import config as config_lib
from alphaalign_jax.checkpoint import CheckpointWriteError, disk_full, first_line
from alphaalign_jax.data.budget import PromptTooLong
from alphaalign_jax.data.pipeline import bundled_splits
from alphaalign_jax.data.records import DataError
from alphaalign_jax.models import CheckpointError, ConfigError
from alphaalign_jax.rl import algorithms
from alphaalign_jax.rl.step import NonFiniteError
from alphaalign_jax.rundir import RunDirLocked
from alphaalign_jax.stop import Preempted
from alphaalign_jax.trainer import Trainer

FLAGS = flags.FLAGS


# ---------------------------------------------------------------- after the last step
def evaluate_final(workdir: pathlib.Path, step: int, prompts: int,
                   new_tokens: int) -> pathlib.Path:
    """A small held-out evaluation of checkpoint ``step`` (``train.eval_prompts`` prompts of
    the harmful and the over-refusal sets, greedy, under the run's prompt; no prefill attack,
    pass@k or judge): alphaalign_jax/evaluate.py's API in this process. Returns results.md."""
    from alphaalign_jax import evaluate

    out = workdir / "eval"
    settings = evaluate.GenerationSettings.from_run(workdir, max_new_tokens=new_tokens,
                                                    num_samples=1)
    splits = bundled_splits(assets.assets_dir() / "data")
    harmful = list(splits["eval_harmful"])[:prompts]
    benign = list(splits["eval_overrefusal"])[:prompts]
    evaluator = evaluate.Evaluator(workdir / "checkpoints" / str(step), out / "model", settings,
                                   reward_reading=evaluate.reward_reading(workdir))
    results = evaluator.run(harmful, benign, None, prefill=(), probe=())
    name = f"step {step}"
    (out / "results.json").write_text(json.dumps({name: results}, indent=2))
    (out / "results.md").write_text(evaluate.markdown_table(
        {name: results}, {name: evaluator.sizes},
        {"harm": f"Greedy answers of {new_tokens} new tokens at most, {len(harmful)} prompts: "
                 "a check that evaluation runs, not a measurement (run alphaalign_jax.evaluate "
                 "for that)."}))
    return out / "results.md"


def export_final(workdir: pathlib.Path, step: int) -> pathlib.Path:
    """Checkpoint ``step`` as a Hugging Face directory, ``<workdir>/hf``, by
    tools/convert_checkpoint.py's orbax-to-hf (the run's chat template, stop string, card)."""
    import importlib.util

    path = pathlib.Path(__file__).resolve().parent.parent / "tools" / "convert_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_checkpoint", path)
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    out = workdir / "hf"
    if out.exists():  # the run's own earlier export, of an earlier last step
        shutil.rmtree(out)
    return pathlib.Path(convert.orbax_to_hf(workdir / "checkpoints" / str(step), out))


def finish(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """What ``train.eval_prompts`` and ``train.export_hf`` ask for after the last step, and
    where each artefact of the run is."""
    t = config.train
    step = int(t.steps)
    if t.select == "validation":
        step = int(json.loads((workdir / "selected.json").read_text())["step"])
        logging.info("the run's result: step %d, selected on the held-back training prompts "
                     "(%s)", step, workdir / "selected.json")
    found = {"checkpoint": workdir / "checkpoints" / str(step),
             "metrics": workdir / "metrics.jsonl", "curves": workdir / "curves.png",
             "samples": workdir / "samples.jsonl", "tensorboard": workdir / "tensorboard"}
    if config.rft.rounds or config.rft.targets_file:
        found["warm start"] = workdir / "warm_start"
    if jax.process_index() == 0:
        if t.eval_prompts:
            logging.info("evaluating step %d on %d held-out prompts a set", step, t.eval_prompts)
            found["evaluation"] = evaluate_final(workdir, step, int(t.eval_prompts),
                                                 int(t.eval_new_tokens))
        if t.export_hf:
            logging.info("exporting step %d to %s", step, workdir / "hf")
            found["HF export"] = export_final(workdir, step)
    return {k: v for k, v in found.items() if v.exists()}


CONFIG_FLAG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                              lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, plots.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host "
                  "TPU/GPU: every host runs the same command and the same host-side work).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (auto on Cloud TPU).")
flags.DEFINE_integer("num_processes", None, "Number of processes (auto on Cloud TPU).")
flags.DEFINE_integer("process_id", None, "This process's index (auto on Cloud TPU).")


# Errors of what the user gave (the command line, the config, its files, the workdir's run),
# found while the Trainer is made: before a weight loads or the workdir is written.
INPUT_ERRORS = (config_lib.ConfigValueError, ConfigError, CheckpointError, DataError,
                PromptTooLong, FileNotFoundError)


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS.workdir or FLAGS.workdir.startswith("-"):
        config_lib.usage_error(
            f"train: --workdir: {'missing' if not FLAGS.workdir else repr(FLAGS.workdir)}"
            f"{'' if not FLAGS.workdir else ' is a flag, not a directory'}; the run "
            "directory, e.g. --workdir=runs/smollm2")
    if not FLAGS["verbosity"].present:  # status at INFO; orbax's per-file INFO lines hidden
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_not_library_info)
    if FLAGS.distributed:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    workdir = _train(CONFIG_FLAG.value, FLAGS.workdir)
    artefacts = finish(CONFIG_FLAG.value, workdir)
    if jax.process_index() == 0:
        width = max(map(len, artefacts))
        print("\n".join(f"{name:<{width}}  {path}" for name, path in artefacts.items()))
        if "smoke" in _config_options(sys.argv):
            print("smoke run done: every phase ran (plumbing), which says nothing about "
                  "learning; the main command is the config without :smoke")


def _train(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
    """Make the Trainer (every input checked) and run it; each way it can end but the last
    step is one line."""
    try:
        return _make_and_run(config, workdir)
    except OSError as e:
        if not disk_full(e):
            raise
        sys.exit(f"train: {workdir}: the disk is full ({first_line(e, 200)}); free space, then "
                 "re-run the same command to resume from the last good checkpoint")


def _make_and_run(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
    try:
        trainer = Trainer(config, workdir)
    except RunDirLocked as e:
        sys.exit(f"train: {e}")
    except DataError as e:
        config_lib.usage_error(f"train: {e}; {config_lib.PROMPT_ROWS}")
    except INPUT_ERRORS as e:
        config_lib.usage_error(f"train: {e}")
    try:
        return trainer.run()
    except Preempted as e:
        logging.warning("%s (%s)", e, workdir)
        sys.exit(0)
    except (config_lib.ConfigValueError, DataError, PromptTooLong) as e:
        config_lib.usage_error(f"train: {e}")  # found only now (the warm start's targets)
    except (CheckpointError, CheckpointWriteError, NonFiniteError, FileNotFoundError) as e:
        sys.exit(f"train: {e}")  # a condition of the run: one line, no traceback


def _not_library_info(record) -> bool:
    """The absl handler's filter: INFO lines of this package only (orbax writes one a file)."""
    return record.levelno > logging.converter.STANDARD_INFO or "/alphaalign_jax/" in record.pathname


def _config_options(argv: Sequence[str]) -> set[str]:
    """The ``ARG`` words of ``--config=FILE:ARG`` on the command line."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return {w.strip() for w in given[-1].partition(":")[2].split(",")} if given else set()


def _help(argv: Sequence[str]) -> NoReturn:
    """``train --help``: the command, every config field with the config file's value and its
    meaning (config.field_help, from the comments of config.base_config), the file's options."""
    import importlib.util

    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    path = pathlib.Path(given[-1].partition(":")[0] if given else
                        pathlib.Path(__file__).resolve().parent.parent / "configs" /
                        "smollm2_135m_cpu.py")
    spec = importlib.util.spec_from_file_location("config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(given[-1].partition(":")[2] if given else "").to_dict()
    print(f"usage: python -m alphaalign_jax.train --config=FILE[:OPTIONS] --workdir=DIR "
          "[--config.SECTION.FIELD=VALUE ...]\n\n"
          "example:\n  python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py:smoke "
          "--workdir=runs/smoke\n  python -m alphaalign_jax.train "
          "--config=configs/smollm2_135m_cpu.py --workdir=runs/smollm2 --config.train.steps=20\n")
    options = getattr(module, "OPTIONS", {})
    print(f"options of {path} (comma-separated after ':'):")
    for name, algorithm in algorithms.ALGORITHMS.items():
        print(f"  {name:<14} {algorithm.summary}" + (" (the default)" if name == "grpo" else ""))
    for name, meaning in options.items():
        print(f"  {name:<14} {meaning}")
    print(f"\nconfig fields (--config.FIELD=VALUE; the value {path.name} gives, then meaning):")
    meanings = config_lib.field_help()

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    for name, value in walk(c):
        shown = repr(value)
        shown = shown if len(shown) <= 24 else shown[:21] + "..."
        print(f"  {name:<28} {shown:<24} {meanings.get(name, '')}")
    print("\nflags:\n  --workdir  " + FLAGS["workdir"].help + "\n  --distributed  "
          + FLAGS["distributed"].help)
    sys.exit(0)


def _flag_error(program: str, error: flags.Error) -> str:
    """absl's message of a bad flag as ``<flag or field>: <what is wrong>; <what is allowed>``."""
    import re

    text = str(error)
    if isinstance(error, flags.UnrecognizedFlagError):
        name = error.flagname
        if name.startswith("config."):
            return (f"{name}: not a field of the config; the fields are in the config file's "
                    "get_config() and alphaalign_jax/config.py")
        return (f"--{name}: unknown flag; the flags are --config=FILE[:OPTIONS], "
                f"--config.<field>=VALUE, {', '.join(PROGRAM_FLAGS[program])} (--helpfull "
                "lists them all)")
    if text.startswith("Missing value for flag "):
        return f"{text.rsplit(' ', 1)[-1]}: missing value; --flag=VALUE"
    found = re.match(r"flag --([\w.]+)=(.*?): (.*)", text, flags=re.DOTALL)
    if not found:
        return text.splitlines()[-1]
    name, value, reason = found.groups()
    name = name if name.startswith("config.") else f"--{name}"
    lines = [line for line in reason.splitlines() if line.strip()]
    if "must have a value other than None" in reason:
        return f"{name}: missing; required" + (", e.g. --config=configs/smollm2_135m_cpu.py"
                                               if name == "--config" else "")
    if "Error whilst parsing config file" in reason:  # the config file's own error: its last line
        message = lines[-1].split(": ", 1)[-1]
        return message.replace("--config=FILE:", f"--config={value.split(':', 1)[0]}:")
    for says, wants in (("invalid literal for int()", "an int"),
                        ("could not convert string to float", "a number"),
                        ("Non-boolean argument", "True or False"),
                        ("as a ConfigDict", "a value")):
        if says in reason:
            return (f"{name}: a section, not a value; set its fields, --{name}.<field>=VALUE"
                    if wants == "a value" else f"{name}: {value!r} is not {wants}; {wants}")
    return f"{name}: {lines[-1] if lines else reason}"


PROGRAM_FLAGS = {"train": ("--workdir", "--distributed", "--coordinator_address",
                           "--num_processes", "--process_id"),
                 "aot": ("--topology", "--search", "--json")}


def parse_flags(argv: list[str], program: str = "train") -> list[str]:
    """absl's parser with every error one line, ``PROGRAM: <flag or field>: <what is wrong>;
    <what is allowed>``, exit status 2 (absl's own is a usage dump or a traceback): a config
    file that is not there or does not load, an unknown flag, config option or field, a value
    of the wrong type. And the algorithm chosen where its settings can apply before the
    overrides (``--config=FILE:ppo``)."""
    if program == "train" and {"--help", "-h", "--helpfull", "-help"} & set(argv[1:]):
        _help(argv)
    named = [a for a in argv if a.startswith("--config.algo.name")]
    if named:
        config_lib.usage_error(
            f"{program}: config.algo.name: set on its own; choose the algorithm with "
            f"--config=FILE:NAME (one of {', '.join(algorithms.ALGORITHMS)}), so the settings "
            "it fixes apply before your --config.* overrides")
    given = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if given is None and any(a.startswith("--config.") for a in argv):
        config_lib.usage_error(f"{program}: --config: missing; required before --config.* "
                               "overrides, e.g. --config=configs/smollm2_135m_cpu.py")
    if given is not None and not pathlib.Path(given.split(":", 1)[0]).is_file():
        configs = pathlib.Path(__file__).resolve().parent.parent / "configs"
        known = sorted(f"configs/{p.name}" for p in configs.glob("*.py")
                       if not p.name.startswith("_"))
        config_lib.usage_error(f"{program}: --config={given}: no such config file; one of "
                               f"{', '.join(known)}, or the path of a file with get_config()")
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        config_lib.usage_error(f"{program}: {_flag_error(program, e)}")
    except (AttributeError, KeyError) as e:  # ml_collections' error for a field it lacks
        name = str(e).strip("\"' ")
        field = [a.split("=")[0][2:] for a in argv
                 if a.startswith("--config.") and name in a.split("=")[0].split(".")]
        config_lib.usage_error(f"{program}: {field[0] if field else name}: not a field of the "
                               "config; the fields are in the config file's get_config() and "
                               "alphaalign_jax/config.py")
    config = CONFIG_FLAG.value
    if config is not None and not isinstance(config, ml_collections.ConfigDict):
        try:  # ml_collections keeps a file's load error until the config is read
            getattr(config, "model")
        except Exception as e:  # noqa: BLE001 (whatever the file raised)
            lines = [line for line in str(e).splitlines() if line.strip()]
            config_lib.usage_error(f"{program}: --config={given}: cannot be loaded "
                                   f"({lines[-1].strip() if lines else e!r}); a Python file "
                                   "whose get_config() returns the config")
    return rest


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
