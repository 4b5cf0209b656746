"""Ahead-of-time compilation for a TPU slice with the real TPU compiler (libtpu), no TPU:
a tiny architecture on v5e-8, checked against what its shapes say, and a plan that does not
fit. Runs in subprocesses: libtpu must be set up before JAX starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alphaalign_jax import assets
from tests.tiny_run import REPO

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
OVERRIDES = ["--config.rollout.max_prompt_len=64", "--config.rollout.max_new_tokens=32",
             "--config.rollout.num_samples=4", "--config.train.prompts_per_step=8",
             "--config.algo.micro_batch_size=16", "--config.algo.beta=0.04",
             "--config.reward.helpfulness=lm_judge", "--config.reward.rm_batch_size=8",
             "--config.reward.rm_max_len=96"]

pytestmark = pytest.mark.skipif(not assets.libtpu_path().is_file(),
                                reason="libtpu not fetched (tools/fetch_assets.py --only libtpu)")


def run_aot(tmp_path, *extra: str, prelude: str = "", topology: str = "v5e-8",
            config: str = "configs/smollm2_135m_cpu.py", layers: int = 2
            ) -> subprocess.CompletedProcess:
    (tmp_path / "tiny").mkdir(exist_ok=True)
    (tmp_path / "tiny" / "config.json").write_text(json.dumps({**TINY,
                                                               "num_hidden_layers": layers}))
    argv = ["aot", f"--config={config}", f"--topology={topology}",
            f"--config.model.hf_dir={tmp_path / 'tiny'}", f"--json={tmp_path / 'plan.json'}",
            *OVERRIDES, *extra]
    code = (f"import sys; sys.argv = {argv!r}\nimport alphaalign_jax.aot as aot\n{prelude}\n"
            "from absl import app\napp.run(aot.main)")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)  # no timeout: a loaded machine must not fail it


@pytest.mark.parametrize("topology, chips", [("v5e-8", 8), ("v4-8", 4)])
@pytest.mark.slow
def test_tiny_config_compiles_for_a_slice_and_its_numbers_follow_its_shapes(tmp_path, topology,
                                                                          chips):
    out = run_aot(tmp_path, topology=topology)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["devices"] == chips and plan["mesh"] == {"data": 1, "fsdp": chips, "tensor": 1}
    assert plan["fits"] and "fits" in out.stdout and "one RL step at the roofline" in out.stdout
    programs = {p["program"]: p for p in plan["programs"]}
    assert set(programs) == {"update (fwd+bwd+optimizer)", "reference log-probs",
                             "sampler prefill", "sampler decode (one token)",
                             "sampler decode loop (memory)", "reward model forward"}
    # float32 parameters sharded over the chips: embeddings and head, then per layer q, o
    # (64 x 64), k, v (64 x 32), gate, up, down (64 x 128) and two norms; the final norm
    params = 2 * 512 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    per_chip = plan["resident_state_bytes"]["policy parameters"]
    assert params * 4 / chips <= per_chip <= 1.1 * params * 4 / chips
    assert plan["resident_state_bytes"]["optimizer state"] >= 2 * per_chip  # Adam's two moments
    # 2 micro-batches of 16 completions; 31 decode steps after the prefill's first token
    assert programs["update (fwd+bwd+optimizer)"]["runs_a_step"] == 2
    assert programs["sampler decode (one token)"]["runs_a_step"] == 31
    assert all(p["flops"] > 0 and p["total"] > 0 for p in plan["programs"])
    update, decode = programs["update (fwd+bwd+optimizer)"], programs["sampler decode (one token)"]
    assert update["flops"] > 20 * decode["flops"]  # 16 x 96 tokens fwd+bwd vs 32 rows x 1 token
    # utilisation per phase and of the step (tests/test_utilisation.py re-derives it)
    assert set(plan["mfu"]) == {"rollout", "reference", "update", "step"}
    assert all(0 < v <= 1 for v in plan["mfu"].values()) and "MFU at the roofline" in out.stdout


@pytest.mark.slow
def test_a_lora_plan_holds_the_frozen_base_once_and_adam_for_the_adapters_alone(tmp_path):
    """Rank 4 on every projection: the base is resident once (it is also the KL reference,
    in bf16 here), the adapters and their Adam state are a sliver of it."""
    out = run_aot(tmp_path, "--config.model.lora_rank=4", "--config.model.param_dtype=bfloat16")
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads((tmp_path / "plan.json").read_text())["resident_state_bytes"]
    assert set(state) == {"frozen base parameters", "adapters", "optimizer state",
                          "reference adapters", "reward model"}
    params = 2 * 512 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    assert params * 2 / 8 <= state["frozen base parameters"] <= 1.1 * params * 2 / 8  # bf16
    # float32 A [in, 4] and B [4, out] of q, k, v, o, gate, up, down, two layers
    adapters = 2 * 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert state["adapters"] == state["reference adapters"] <= 4 * adapters  # replicated at most
    # Adam's two moments of the adapters (and its step counts): nothing of the base
    assert 2 * state["adapters"] <= state["optimizer state"] <= 2 * state["adapters"] + 64


@pytest.mark.slow
def test_ppo_plan_compiles_the_critic_and_keeps_it_resident(tmp_path):
    out = run_aot(tmp_path, "--config.algo.mini_batches=2", "--config.model.remat=True",
                  config="configs/smollm2_135m_cpu.py:ppo")
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    programs = {p["program"]: p for p in plan["programs"]}
    assert {"critic values", "critic update"} <= set(programs)
    state = plan["resident_state_bytes"]
    # the critic: the policy's backbone and a 1-label head instead of the LM head, and its Adam
    assert 0.5 * state["policy parameters"] < state["critic parameters"] < \
        state["policy parameters"]
    assert state["critic optimizer state"] >= 2 * state["critic parameters"]
    # 8 prompts x 4 rollouts in 2 mini-batches of 16 rows, one micro-batch of 16 each
    assert programs["critic update"]["runs_a_step"] == 2
    assert programs["critic values"]["flops"] > 0


@pytest.mark.slow
def test_the_safety_judge_is_resident_and_its_forward_compiled(tmp_path):
    """reward.safety_judge (a 2-layer judge here): its weights stay resident, and its forward
    runs over the step's harmful rollouts (8 x 4 x 0.5 = 16, 2 batches of 8) at the length
    bucket of its instructions, a prompt and a completion (384 + 64 + 32 -> 512)."""
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "config.json").write_text(json.dumps({**TINY, "vocab_size": 1024}))
    out = run_aot(tmp_path, f"--config.reward.safety_judge={tmp_path / 'judge'}")
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    programs = {p["program"]: p for p in plan["programs"]}
    judge = programs["safety judge forward"]
    assert judge["runs_a_step"] == 2 and judge["flops"] > 0
    # per chip: float32 weights sharded over 8 chips, embeddings and head of 1024 x 64 each
    params = 2 * 1024 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    state = plan["resident_state_bytes"]["safety judge"]
    assert params * 4 / 8 <= state <= 1.1 * params * 4 / 8
    # the same blocks as the reward model (the LM judge: the policy's), over 512 tokens, not 96
    assert judge["flops"] > 4 * programs["reward model forward"]["flops"]


@pytest.mark.slow
def test_a_scanned_plan_costs_what_one_block_a_layer_costs(tmp_path):
    """XLA's cost analysis counts the scanned layers' loop body once; the plan reads the cost
    from 1- and 2-block probes instead, so a 4-block scanned model (PPO: the critic is scanned
    too) costs what the one-block-a-layer plan does, while its memory is its own compile's."""
    plans = {}
    for scan in (False, True):
        out = run_aot(tmp_path, f"--config.model.scan_layers={scan}", "--config.model.remat=True",
                      config="configs/smollm2_135m_cpu.py:ppo", layers=4)
        assert out.returncode == 0, out.stderr[-3000:]
        plans[scan] = json.loads((tmp_path / "plan.json").read_text())
    assert (plans[False]["cost"], plans[True]["cost"]) == ("compiled", "probed")
    for plain, scanned in zip(plans[False]["programs"], plans[True]["programs"]):
        assert plain["program"] == scanned["program"]
        assert scanned["flops"] == pytest.approx(plain["flops"], rel=1e-3), plain["program"]
        if plain["runs_a_step"]:
            assert scanned["bytes_accessed"] == pytest.approx(plain["bytes_accessed"], rel=0.1)
    assert plans[True]["step_roofline_s"] == pytest.approx(plans[False]["step_roofline_s"],
                                                           rel=0.1)


@pytest.mark.slow
def test_a_plan_that_does_not_fit_fails_naming_the_tensors(tmp_path):
    small = ("import dataclasses\naot.CHIPS['v5e'] = dataclasses.replace(aot.CHIPS['v5e'], "
             "hbm_bytes=1 << 16)")
    out = run_aot(tmp_path, prelude=small)
    assert out.returncode == 1
    assert "DOES NOT FIT" in out.stdout
    assert "aot: does not fit: the largest per-chip tensors are" in out.stderr
    assert "--config.mesh.fsdp" in out.stderr and "--config.model.remat=True" in out.stderr


def test_unknown_topology_is_one_line(tmp_path):
    out = run_aot(tmp_path, "--topology=v5e-7")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "aot: --topology=v5e-7: no such v5e slice; one of v5e-1, v5e-4, v5e-8, v5e-16, v5e-32, "
        "v5e-64, v5e-128, v5e-256"]


@pytest.mark.slow
def test_the_compilers_out_of_memory_is_a_does_not_fit_report(tmp_path):
    """What the TPU compiler says for the paper's Qwen2.5-3B update on v5e-16 (measured:
    102.60G of temporaries against 15.75G of HBM) ends in one line, not a traceback."""
    refuse = ("import jax, jax.stages\n"
              "def refuse(self, *args, **kwargs):\n"
              "    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Ran out of memory on HBM, "
              "the total memory required for HLO temporaries (102.60G) exceeds available HBM "
              "(15.75G).')\n"
              "jax.stages.Lowered.compile = refuse")
    out = run_aot(tmp_path, prelude=refuse)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("aot: does not fit on v5e-8: update: RESOURCE_EXHAUSTED")
    assert "(102.60G) exceeds available HBM" in last and "largest per-chip tensors" in last


REMAT_PROBE = """
import dataclasses, sys
import alphaalign_jax.aot  # points JAX at the bundled libtpu first
import jax, jax.numpy as jnp
from flax import nnx
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding
from alphaalign_jax.models import ModelConfig, Transformer
from alphaalign_jax.rl.step import grouped_completion_logprobs

cfg = ModelConfig.from_hf_dict({"model_type": "llama", "vocab_size": 64, "hidden_size": 512,
                                "intermediate_size": 2048, "num_hidden_layers": 6,
                                "num_attention_heads": 8, "num_key_value_heads": 2,
                                "rope_theta": 1e4, "tie_word_embeddings": True})
device = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices[0]
graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: Transformer(cfg)), nnx.Param, ...)
on_chip = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(
    x.shape, x.dtype, sharding=SingleDeviceSharding(device)), t)
args = on_chip((params, rest, jax.ShapeDtypeStruct((4, 32), jnp.int32),
                jax.ShapeDtypeStruct((12, 512), jnp.int32)))
for remat in (False, True):
    def loss(p, r, prompt_ids, completion_ids):
        model = nnx.merge(graphdef, p, r)
        return grouped_completion_logprobs(model, prompt_ids, jnp.ones((4, 32), bool),
                                           completion_ids, 3, 1.0, 128, remat=remat)[0].sum()
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    print(compiled.memory_analysis().temp_size_in_bytes)
"""


@pytest.mark.slow
def test_remat_keeps_one_block_of_activations_on_a_tpu():
    """The update's backward pass with rematerialised blocks (model.remat), compiled by the TPU
    compiler (whose scheduler is memory-aware, unlike XLA:CPU's): its temporaries shrink from
    every block's activations to about one block's (6 blocks here)."""
    out = subprocess.run([sys.executable, "-c", REMAT_PROBE], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    kept, recomputed = map(int, out.stdout.split())
    assert recomputed < 0.5 * kept, (kept, recomputed)


SEARCH = ["--search", "--config.train.prompts_per_step=2", "--config.algo.micro_batch_size=4",
          "--config.algo.beta=0.0", "--config.reward.helpfulness=none"]


@pytest.mark.slow
def test_search_compiles_each_mesh_and_micro_batch_and_ranks_them(tmp_path):
    """v4-8 (4 devices), 2 prompts x 4 rollouts: 5 (data, fsdp, tensor) meshes (2 KV heads
    bound tensor at 2) x micro-batches 4 and 8; the sampler compiled once a mesh."""
    out = run_aot(tmp_path, *SEARCH, topology="v4-8")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "plan.json").read_text())
    tried = {(tuple(r["mesh"].values()), r["micro_batch_size"]) for r in results}
    meshes = {(1, 4, 1), (2, 2, 1), (4, 1, 1), (1, 2, 2), (2, 1, 2)}
    assert tried == {(m, micro) for m in meshes for micro in (4, 8)}
    assert all(r["fits"] for r in results)
    times = [r["step_roofline_s"] for r in results]
    assert times == sorted(times)
    assert out.stderr.count("compiled prefill") == len(meshes)
    assert out.stderr.count("compiled update") == 2 * len(meshes)
    best = results[0]
    assert f"mesh {best['mesh']}, micro-batch {best['micro_batch_size']}" in out.stdout
    assert all(0 < r["mfu"]["step"] <= 1 for r in results)  # each row's utilisation
    assert out.stdout.count("MFU rollout") == len(results)


@pytest.mark.slow
def test_search_rules_out_what_cannot_fit_before_compiling_it(tmp_path):
    """With a chip of 0.9 MB, the data=4 mesh's resident state (unsharded float32 weights and
    Adam, 1.7 MB; 0.4-0.8 MB on the others) rules it out uncompiled; every other mesh stops
    at its first micro-batch, which does not fit even with both memory savers (the closest,
    fsdp=4, needs 1.00 MB as configured and 0.93 MB with them: a 1 MB chip fits it), and the
    search ends with the closest one's report and the largest tensors."""
    small = ("import dataclasses\naot.CHIPS['v4'] = dataclasses.replace(aot.CHIPS['v4'], "
             "hbm_bytes=900_000)")
    out = run_aot(tmp_path, *SEARCH, prelude=small, topology="v4-8")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith(
        "aot: does not fit: the largest per-chip tensors are")
    results = json.loads((tmp_path / "plan.json").read_text())
    assert not any(r["fits"] for r in results)
    assert {r["micro_batch_size"] for r in results} == {4}  # never the larger micro-batch
    pruned = [r for r in results if "resident state alone" in r.get("error", "")]
    assert {tuple(r["mesh"].values()) for r in pruned} == {(4, 1, 1)}
    # each mesh tried as configured, then with remat, then with remat and a bf16 first moment
    assert [r["savers"] for r in pruned] == SAVERS
    assert out.stderr.count("compiled update") == 4 * len(SAVERS)


SAVERS = [{}, {"model.remat": True}, {"model.remat": True, "optim.mu_dtype": "bfloat16"}]
ONLY_REMAT_FITS = """
plan = aot.plan
def remat_or_nothing(c, *args):  # a chip on which only a rematerialised update fits
    result = plan(c, *args)
    return {**result, "fits": result["fits"] and c.model.remat}
aot.plan = remat_or_nothing
"""


@pytest.mark.slow
def test_search_adds_a_memory_saver_only_where_the_config_does_not_fit(tmp_path):
    """Where the config's own settings do not fit (here: made so for every plan without
    model.remat), the search retries the mesh and micro-batch with remat and stops there
    (no bf16 first moment), and tries the mesh's larger micro-batch with remat at once; the
    best result names the flags it added."""
    out = run_aot(tmp_path, *SEARCH, prelude=ONLY_REMAT_FITS, topology="v4-8")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "plan.json").read_text())
    assert {(r["fits"], tuple(r["savers"].items())) for r in results} == {
        (False, ()), (True, (("model.remat", True),))}
    fitted = [r for r in results if r["fits"]]
    assert len(fitted) == 10 and results[:10] == fitted  # fits first, both micro-batches
    assert len(results) == 15  # without remat only each mesh's first micro-batch
    assert "to fit, the search added --config.model.remat=True" in out.stdout


SAME_UPDATE = """
import sys, json
import alphaalign_jax.aot as aot  # first: it points JAX at the bundled libtpu
import jax
from alphaalign_jax import train as train_lib
from alphaalign_jax.config import base_config

c = base_config("grpo")
c.model.hf_dir, c.data.train_file = sys.argv[1], sys.argv[2]
c.system_prompt, c.reward.helpfulness = "", "none"
c.rollout.update(num_samples=2, max_new_tokens=16, max_prompt_len=192)
c.algo.update(beta=0.04, micro_batch_size=2)
c.train.update(prompts_per_step=2, plot=False)
lowered = {}
update_programs = aot.programs_lib.update_programs

def recording(*args, **kwargs):  # the plan's update step, and the arguments it lowers it with
    step, ref = update_programs(*args, **kwargs)

    class Step:
        def lower(self, *abstract):
            lowered["args"] = abstract
            lowered["plan"] = step.lower(*abstract)
            return lowered["plan"]
    return Step(), ref

aot.programs_lib.update_programs = recording
aot.compile_programs(c, jax.devices())
aot.programs_lib.update_programs = update_programs
trainer = train_lib.Trainer(c, sys.argv[3])
ran = trainer.update_step.lower(*lowered["args"]).as_text()
planned = lowered["plan"].as_text()
print(json.dumps({"same": ran == planned, "lines": len(planned.splitlines()),
                  "donated": "tf.aliasing_output" in planned}))
"""


@pytest.mark.assets
@pytest.mark.slow
def test_the_plan_lowers_the_update_step_the_trainer_runs(tmp_path, smollm2_dir):
    """The plan's update program and the one a real trainer runs, lowered with the plan's
    shapes and shardings, are the same StableHLO text (one program: a change to the trainer's
    step changes the plan)."""
    from tests.tiny_run import make_tiny_policy, write_prompts

    policy = make_tiny_policy(tmp_path / "policy", smollm2_dir)
    prompts = write_prompts(tmp_path / "train.jsonl")
    out = subprocess.run([sys.executable, "-c", SAME_UPDATE, str(policy), str(prompts),
                          str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same"] and result["lines"] > 100 and result["donated"], result


def test_the_search_tries_only_the_savers_the_config_lacks():
    code = ("import json\nimport alphaalign_jax.aot as aot\n"
            "from alphaalign_jax.config import base_config\n"
            "c = base_config('grpo')\nfirst = aot._savers(c)\nc.model.remat = True\n"
            "second = aot._savers(c)\nc.optim.mu_dtype = 'bfloat16'\n"
            "print(json.dumps([first, second, aot._savers(c)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == [SAVERS, [{}, {"optim.mu_dtype": "bfloat16"}], [{}]]
