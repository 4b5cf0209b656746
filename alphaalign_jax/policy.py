"""The policy being trained: its parameters, and how it is prompted and sampled."""

from __future__ import annotations

import dataclasses

from flax import nnx

from alphaalign_jax.data.records import PromptRecord
from alphaalign_jax.models import Transformer, trainable
from alphaalign_jax.rewards import scored_response
from alphaalign_jax.rewards.template import PROMPT_PLACEHOLDER, PromptFormat, build_chat_prompt
from alphaalign_jax.sampling import Rollouts, Sampler, SamplingSettings


class Policy:
    """Parameters split for the jitted programs (``params`` are trained, ``rest`` fixed) and
    the sampler that reads them."""

    def __init__(self, model: Transformer, tokenizer, mesh, prompt: PromptFormat,
                 max_prompt_len: int) -> None:
        self.graphdef, self.params, self.rest = nnx.split(model, trainable(model.config), ...)
        self.tokenizer, self.format = tokenizer, prompt
        self.sampler = Sampler(model, tokenizer, mesh=mesh, max_prompt_len=max_prompt_len)

    def model(self) -> Transformer:
        return nnx.merge(self.graphdef, self.params, self.rest)

    def prompt_text(self, record: PromptRecord, system_prompt: str | None = None) -> str:
        """What the policy is conditioned on: the chat prompt under the run's system prompt
        (or ``system_prompt``), then the forced response start."""
        return self.format.render(record.prompt, self.tokenizer, system_prompt)

    def encode(self, records: list[PromptRecord]) -> list:
        """The token ids of the records' training prompts."""
        return self.sampler.encode([self.prompt_text(r) for r in records])

    def rollouts(self, records: list[PromptRecord], sampling: SamplingSettings, seed: int,
                 system_prompt: str | None = None, temperature: float = 0.0
                 ) -> tuple[Rollouts, list[list[str]]]:
        """G rollouts of each prompt with the current parameters (at ``temperature``, 0 =
        the settings'), and their texts grouped by prompt as the verifiers score them
        (response prefix included)."""
        settings = dataclasses.replace(sampling, temperature=temperature or sampling.temperature)
        rollouts = self.sampler.generate(
            [self.prompt_text(r, system_prompt) for r in records], seed=seed,
            state=nnx.state(self.model()), **dataclasses.asdict(settings))
        group, prefix = sampling.num_samples, self.format.response_prefix
        texts = [scored_response(t, prefix) for t in rollouts.texts]
        return rollouts, [texts[i * group:(i + 1) * group] for i in range(len(records))]

    def greedy(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """The current policy's greedy completions of ``prompts``."""
        return list(self.sampler.generate(prompts, max_new_tokens=max_new_tokens, greedy=True,
                                          num_samples=1, state=nnx.state(self.model())).texts)

    def plain_answers(self, records: list[PromptRecord], budget: int) -> list[str]:
        """The greedy answer to each bare question (its chat template, no safety template or
        system prompt) in at most ``budget`` new tokens."""
        return self.greedy([build_chat_prompt(r.prompt, self.tokenizer, PROMPT_PLACEHOLDER)
                            for r in records], budget)
