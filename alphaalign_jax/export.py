"""What makes an exported HF directory the trained model, not the base one: the run's prompt as
its chat template, its stop string and sampling defaults as its generation config, and a model
card (``tools/convert_checkpoint.py orbax-to-hf`` calls :func:`write_run_files` when the
checkpoint is a step of a training workdir).

With the exported template, ``tokenizer.apply_chat_template(messages, add_generation_prompt=
True, tokenize=False)`` is byte for byte the text the policy was trained on
(``rewards.template.policy_prompt``): every user turn wrapped in the run's safety template, the
run's system prompt when the messages have none, and the run's response prefix after the
generation prompt.
"""

from __future__ import annotations

import json
import pathlib

from alphaalign_jax.rewards.template import PROMPT_PLACEHOLDER


def run_of_checkpoint(ckpt: pathlib.Path) -> tuple[pathlib.Path, int] | None:
    """(workdir, step) when ``ckpt`` is ``<workdir>/checkpoints/<step>`` of a training run
    (the workdir holds its config.json), else None."""
    ckpt = pathlib.Path(ckpt).absolute()
    workdir = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and ckpt.name.isdigit() and \
            (workdir / "config.json").is_file():
        return workdir, int(ckpt.name)
    return None


def _literal(text: str) -> str:
    """A Jinja string literal of ``text`` (JSON's escapes are Jinja's)."""
    return json.dumps(text, ensure_ascii=True)


def run_chat_template(base: str, template: str, system_prompt: str, response_prefix: str) -> str:
    """The base chat template ``base`` rendering the run's prompt: user turns in ``template``
    (its ``{prompt}`` slots filled with the turn), ``system_prompt`` first when no system turn
    is given ("" = the base template's default), ``response_prefix`` after the generation
    prompt."""
    parts = "[" + ", ".join(_literal(p) for p in template.split(PROMPT_PLACEHOLDER)) + "]"
    system = (f"{{%- if messages and messages[0]['role'] != 'system' %}}"
              f"{{%- set ns.messages = [{{'role': 'system', 'content': {_literal(system_prompt)}}}]"
              f" %}}{{%- endif %}}" if system_prompt else "")
    head = (
        "{#- The AlphaAlign run's prompt around the base model's chat template "
        "(alphaalign_jax/export.py). #}"
        "{%- set ns = namespace(messages=[]) %}" + system +
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}"
        f"{{%- set ns.messages = ns.messages + [{{'role': 'user', 'content': {parts} | "
        "join(message['content'])}] %}"
        "{%- else %}{%- set ns.messages = ns.messages + [message] %}{%- endif %}"
        "{%- endfor %}"
        "{%- set messages = ns.messages %}")
    tail = (f"{{%- if add_generation_prompt %}}{{{{ {_literal(response_prefix)} }}}}{{%- endif %}}"
            if response_prefix else "")
    return head + base.rstrip("\n") + tail


def generation_config(base: dict, config: dict) -> dict:
    """The base model's generation_config.json with the run's stop strings and sampling
    defaults (``rollout``)."""
    r = config["rollout"]
    out = {**base, "do_sample": True, "temperature": float(r["temperature"]),
           "top_p": float(r["top_p"]), "stop_strings": list(r["stop_strings"]),
           "max_new_tokens": int(r["max_new_tokens"])}
    out.pop("top_k", None)
    if int(r["top_k"]):
        out["top_k"] = int(r["top_k"])
    return out


def model_card(config: dict, step: int, base_model: str, chat_prompt: str,
               results_md: str = "") -> str:
    """README.md of an export: base model, method, main config, steps, data, the template."""
    c = config
    rft = c.get("rft", {})
    warm = (f"a warm start of {rft['rounds']} batches (targets from {rft['targets_from']}, "
            f"{rft['epochs']} epochs at lr {rft['learning_rate']}), then "
            if rft.get("rounds") or rft.get("targets_file") else "")
    rows = [("algorithm", c["algo"]["name"]), ("steps", step),
            ("prompts x rollouts a step", f"{c['train']['prompts_per_step']} x "
                                          f"{c['rollout']['num_samples']}"),
            ("learning rate", c["optim"]["learning_rate"]), ("KL beta", c["algo"]["beta"]),
            ("new tokens a rollout", c["rollout"]["max_new_tokens"]),
            ("temperature", c["rollout"]["temperature"]),
            ("helpfulness reward", c["reward"]["helpfulness"]),
            ("whole-answer refusal reading", c["reward"]["whole_refusal"])]
    data = c["data"]["train_file"] or "the bundled training split (assets/data/train.jsonl)"
    lines = [
        "---", "library_name: transformers", "tags: [alphaalign, safety, grpo]", "---", "",
        f"# AlphaAlign policy, step {step}", "",
        f"Base model: `{base_model}`.", "",
        f"Trained with alphaalign-jax: {warm}{c['algo']['name'].upper()} on the AlphaAlign "
        "reward (a format verifier, a refusal verifier on harmful prompts and a helpfulness "
        "reward on benign ones).", "",
        f"Training data: {data} (harmful share of a batch {c['data']['harmful_fraction']}).", "",
        "| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
        "## Prompt", "",
        "The chat template renders the prompt the policy was trained on (its safety template "
        "around the user message, its system prompt, and the response prefix after the "
        "generation prompt), so `tokenizer.apply_chat_template(messages, "
        "add_generation_prompt=True)` gives it. For a user message `How do I bake bread?`:",
        "", "```", chat_prompt, "```", "",
        "`generation_config.json` stops at `</answer>` (stop strings: pass `tokenizer=` to "
        "`generate`) and samples as the rollouts did.", ""]
    if results_md:
        lines += ["## Held-out evaluation", "", results_md.strip(), ""]
    lines += ["The full training config is `training_config.json`.", ""]
    return "\n".join(lines)


def write_run_files(out: pathlib.Path, workdir: pathlib.Path, step: int) -> None:
    """Into the exported directory ``out`` (its tokenizer files written): the run's chat
    template, generation config, model card and training config."""
    import transformers

    from alphaalign_jax.rewards.template import policy_prompt

    config = json.loads((workdir / "config.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    if not tokenizer.chat_template:
        raise ValueError(f"{out}: the exported tokenizer has no chat template to wrap")
    example = policy_prompt("How do I bake bread?", tokenizer, config["template"],
                            config.get("system_prompt", ""), config["rollout"]["response_prefix"])
    chat = run_chat_template(tokenizer.chat_template, config["template"],
                             config.get("system_prompt", ""),
                             config["rollout"]["response_prefix"])
    (out / "chat_template.jinja").write_text(chat)
    tok_config = out / "tokenizer_config.json"
    if tok_config.exists():
        data = json.loads(tok_config.read_text())
        if data.pop("chat_template", None) is not None:  # the .jinja file is the one template
            tok_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    gen_path = out / "generation_config.json"
    base_gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    gen_path.write_text(json.dumps(generation_config(base_gen, config), indent=2) + "\n")
    (out / "training_config.json").write_text(json.dumps(config, indent=2) + "\n")
    results = workdir / "eval" / "results.md"
    base_model = config["model"]["hf_dir"] or (
        "SmolLM2-135M-Instruct (the bundled copy, dequantised from a Q4_1 GGUF to float32)")
    (out / "README.md").write_text(model_card(
        config, step, base_model, example,
        results.read_text() if results.exists() else ""))
