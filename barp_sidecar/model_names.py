"""One table of model-name aliases: data sets, catalogs and policies that spell a model differently meet.

Owns the mapping alias -> canonical name and nothing else (pure, no I/O). The canonical spelling is the
one the shipped policy and catalog use (RouterBench's / the providers' own ids, e.g.
``gpt-4-1106-preview``). Loaders (``trainer.offline.datasets``), the provider catalog and policy manifests
pass every model name through ``canonical_model_name``. Only names known to denote the same model (same
weights, same provider version) are aliased: a base model and its chat fine-tune are different models.
"""

from __future__ import annotations

from collections.abc import Iterable

# alias -> canonical. Keep sorted by canonical name; every entry says where the alias comes from.
MODEL_ALIASES: dict[str, str] = {
    # AlpacaEval's result folders (tatsu-lab/alpaca_eval) vs RouterBench / Anthropic API ids.
    "claude": "claude-v1",  # AlpacaEval "claude" = Claude 1 (claude-v1 in RouterBench)
    "claude-1": "claude-v1",
    "claude-2": "claude-v2",  # AlpacaEval / Anthropic API "claude-2" = RouterBench "claude-v2"
    "claude-2.0": "claude-v2",
    # Bedrock's anthropic.claude-instant-v1 is Claude Instant 1.2 (same 0.8/2.4 USD per 1M tokens).
    "claude-instant-1.2": "claude-instant-v1",
    "anthropic.claude-instant-v1": "claude-instant-v1",
    "anthropic.claude-v2": "claude-v2",
    "gpt35_turbo_1106": "gpt-3.5-turbo-1106",
    "gpt4_1106_preview": "gpt-4-1106-preview",  # AlpacaEval's reference model
    "gpt-4-turbo-1106": "gpt-4-1106-preview",
    "mixtral-8x7b-instruct-v0.1": "mistralai/mixtral-8x7b-chat",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-chat",
    "llama-2-70b-chat-hf": "meta/llama-2-70b-chat",
    "meta-llama/Llama-2-70b-chat-hf": "meta/llama-2-70b-chat",
    "Yi-34B-Chat": "zero-one-ai/Yi-34B-Chat",
    "01-ai/Yi-34B-Chat": "zero-one-ai/Yi-34B-Chat",
}


def canonical_model_name(name: str) -> str:
    """The canonical spelling of ``name`` (itself when it has no alias); surrounding blanks are dropped."""
    stripped = name.strip()
    return MODEL_ALIASES.get(stripped, stripped)


def canonical_model_names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(canonical_model_name(name) for name in names)
