"""What the policy sees: an env's prompt text, through the tokenizer's chat template when the model has one.

With `model.chat_template: auto` and a tokenizer that carries a chat template (an instruct model), the env's
prompt becomes the user message, after `model.system_prompt` if set, and the assistant's turn is opened (the
generation prompt), as TRL, verl and OpenRLHF do. `templated` wraps an env so every problem it hands out
carries the rendered text as its prompt: the rollouts, the warm start, the eval and the stored data set all see
the same string, exactly what the policy saw. A warm-start solution follows that text and ends with the
tokenizer's EOS, the token a chat model ends its turn with. Deliberately not here: multi-turn conversations.
"""

from __future__ import annotations

import dataclasses

from branchrl.envs import Environment, Problem

from .config import ConfigError, ModelConfig


def uses_template(tokenizer, model: ModelConfig) -> bool:
    return model.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, model: ModelConfig, text: str) -> str:
    """The prompt text the policy sees for an env prompt `text`."""
    if not uses_template(tokenizer, model):
        return text
    messages = [{"role": "system", "content": model.system_prompt}] if model.system_prompt is not None else []
    shown = tokenizer.apply_chat_template([*messages, {"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and shown.startswith(bos) and tokenizer.encode("")[:1] == [tokenizer.bos_token_id]:
        shown = shown[len(bos):]   # encode() adds it again; one BOS, as the template meant
    return shown


class Templated:
    """An env whose problems carry the rendered prompt; everything else is the env's own."""

    def __init__(self, env: Environment, tokenizer, model: ModelConfig):
        self.env, self.tokenizer, self.model = env, tokenizer, model

    def __getattr__(self, name: str):
        if name == "env":   # not set yet (unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.env, name)

    def _rendered(self, problems: list[Problem]) -> list[Problem]:
        return [dataclasses.replace(p, prompt=render(self.tokenizer, self.model, p.prompt)) for p in problems]

    def train_problems(self, n: int, seed: int) -> list[Problem]:
        return self._rendered(self.env.train_problems(n, seed))

    def warm_start_problems(self, n: int, seed: int) -> list[Problem]:
        return self._rendered(self.env.warm_start_problems(n, seed))

    def eval_problems(self, n: int) -> list[Problem]:
        return self._rendered(self.env.eval_problems(n))


def templated(env: Environment, tokenizer, model: ModelConfig) -> Environment:
    """env with its prompts rendered when the model uses a chat template, else env itself; a system prompt with
    no template to put it in is a one-line error."""
    if uses_template(tokenizer, model):
        return Templated(env, tokenizer, model)
    if model.system_prompt is not None:
        raise ConfigError(f"model.system_prompt is set but the tokenizer of {model.path or 'the tiny model'} has no "
                          f"chat template to put it in; drop system_prompt or use an instruct model")
    return env
