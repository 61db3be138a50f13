"""What a model looks like to its kernels: the dimensions of a decoder-only transformer.

`ModelDims` is read from a Hugging Face ``config.json`` (`from_hf_config`, `load_config`)
or from the small catalog of well-known models shipped with the package
(``model_catalog.json``: published dimensions, facts only). `load_model` takes either a
catalog name or a path. Each registered kernel's ``shapes_for(model, tokens)`` turns a
`ModelDims` into the shape keys it sees (`presetdb.offline.shapes`).

Pure Python (no torch): ``presetdb shapes`` answers without a GPU.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presetdb.errors import PresetDBError

CATALOG_FILE = "model_catalog.json"


class ModelConfigError(PresetDBError):
    """A model config cannot be read or lacks a dimension the kernels need."""


@dataclass(frozen=True)
class ModelDims:
    """The dimensions of one decoder-only transformer that decide its kernels' shapes.

    `intermediate` is the dense MLP width (None when every layer is a mixture of experts);
    `expert_intermediate` one routed expert's width; `shared_intermediate` the total width
    of the shared experts that run on every token (DeepSeek, Qwen-MoE). `dtype` is the
    serving dtype of the activations (a shape key field), not the checkpoint's.
    """

    name: str
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int | None = None
    layers: int | None = None
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int | None = None
    shared_intermediate: int | None = None
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for name in ("hidden", "vocab", "heads", "kv_heads", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelConfigError(f"model {self.name!r}: {name} must be a positive integer, got {value!r}")
        if self.heads % self.kv_heads:
            raise ModelConfigError(
                f"model {self.name!r}: num_attention_heads {self.heads} is not a multiple of "
                f"num_key_value_heads {self.kv_heads}"
            )
        if self.experts and not (self.experts_per_token and self.expert_intermediate):
            raise ModelConfigError(
                f"model {self.name!r}: {self.experts} experts need num_experts_per_tok and an expert width"
            )
        if not self.experts and not self.intermediate:
            raise ModelConfigError(f"model {self.name!r}: no intermediate_size (dense MLP width)")

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def q_size(self) -> int:
        """Width of the query projection (heads x head_dim; not always `hidden`)."""
        return self.heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        """Output width of the fused q/k/v projection."""
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    def with_dtype(self, dtype: str) -> ModelDims:
        from dataclasses import replace

        return replace(self, dtype=dtype)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


# ---------------------------------------------------------------------- Hugging Face config.json


def _first(cfg: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = cfg.get(name)
        if value is not None:
            return value
    return None


def _int(cfg: Mapping[str, Any], where: str, *names: str, required: bool = True) -> int | None:
    value = _first(cfg, *names)
    if value is None:
        if required:
            raise ModelConfigError(f"{where}: no {' / '.join(names)} (needed for the kernels' shapes)")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelConfigError(f"{where}: {names[0]} must be a non-negative integer, got {value!r}")
    return value


def from_hf_config(config: Mapping[str, Any], name: str, where: str | None = None) -> ModelDims:
    """Dimensions from a Hugging Face ``config.json`` (already parsed).

    Multimodal configs keep the language model under ``text_config``: its fields win over
    the top level's. Field spellings of ChatGLM (``ffn_hidden_size``, ``kv_channels``,
    ``multi_query_group_num``, ``padded_vocab_size``) are read too. MoE: ``num_local_experts``
    (Mixtral), ``n_routed_experts`` (DeepSeek) or ``num_experts`` (Qwen-MoE) with
    ``num_experts_per_tok``; the expert width is ``moe_intermediate_size``, else
    ``intermediate_size`` (Mixtral). Multi-head latent attention (DeepSeek ``kv_lora_rank``)
    is not modelled: its attention projections are not q/k/v of ``head_dim``.
    """
    where = where or name
    if not isinstance(config, Mapping):
        raise ModelConfigError(f"{where}: a config.json holds a JSON object, got {type(config).__name__}")
    cfg: dict[str, Any] = dict(config)
    text = cfg.get("text_config")
    if isinstance(text, Mapping):
        cfg.update({k: v for k, v in text.items() if v is not None})
        where = f"{where} (text_config)"
    if cfg.get("kv_lora_rank"):
        raise ModelConfigError(
            f"{where}: multi-head latent attention (kv_lora_rank) is not modelled; "
            "give the dimensions of a GQA/MHA model"
        )
    hidden = _int(cfg, where, "hidden_size", "n_embd", "d_model")
    heads = _int(cfg, where, "num_attention_heads", "n_head")
    assert hidden is not None and heads is not None
    kv_heads = _int(cfg, where, "num_key_value_heads", "multi_query_group_num", required=False) or heads
    if cfg.get("multi_query_attention") is False:  # ChatGLM: group count given but unused
        kv_heads = heads
    head_dim = _int(cfg, where, "head_dim", "kv_channels", required=False) or (hidden // heads if heads else 0)
    vocab = _int(cfg, where, "vocab_size", "padded_vocab_size")
    intermediate = _int(cfg, where, "intermediate_size", "ffn_hidden_size", "n_inner", required=False)
    experts = _int(cfg, where, "num_local_experts", "n_routed_experts", "num_experts", required=False) or 0
    per_token = _int(cfg, where, "num_experts_per_tok", "moe_top_k", required=False) or 0
    expert_width = shared = None
    if experts:
        moe_width = _int(cfg, where, "moe_intermediate_size", required=False)
        expert_width = moe_width or intermediate
        shared = _int(cfg, where, "shared_expert_intermediate_size", required=False)
        n_shared = _int(cfg, where, "n_shared_experts", required=False)
        if not shared and n_shared and expert_width:
            shared = n_shared * expert_width
        # Dense layers exist only where the config says so (DeepSeek's first layers,
        # Qwen-MoE's mlp_only_layers); Mixtral's intermediate_size is the expert width.
        dense = (cfg.get("first_k_dense_replace") or 0) > 0 or bool(cfg.get("mlp_only_layers")) or (
            (cfg.get("decoder_sparse_step") or 1) > 1
        )
        if not (moe_width and dense):
            intermediate = None
    layers = _int(cfg, where, "num_hidden_layers", "num_layers", "n_layer", required=False)
    return ModelDims(
        name=name,
        hidden=hidden,
        vocab=vocab or 0,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        layers=layers,
        experts=experts,
        experts_per_token=per_token,
        expert_intermediate=expert_width,
        shared_intermediate=shared,
    )


def load_config(path: Path | str) -> ModelDims:
    """A ``config.json`` file (or a directory holding one) as `ModelDims`."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"{path}: not a readable JSON config ({exc})") from None
    name = data.get("_name_or_path") if isinstance(data, dict) else None
    return from_hf_config(data, str(name or path.parent.name or path.stem), where=str(path))


# ---------------------------------------------------------------------- catalog


@functools.cache
def catalog() -> dict[str, ModelDims]:
    """The shipped catalog of well-known models, by name (lower case)."""
    text = (importlib.resources.files("presetdb.offline") / CATALOG_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    out: dict[str, ModelDims] = {}
    for name, entry in data["models"].items():
        fields = {k: v for k, v in entry.items() if k not in ("hf_id", "aliases")}
        out[name] = ModelDims(name=name, **fields)
    return out


@functools.cache
def _aliases() -> dict[str, str]:
    text = (importlib.resources.files("presetdb.offline") / CATALOG_FILE).read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for name, entry in json.loads(text)["models"].items():
        for alias in (entry.get("hf_id"), *entry.get("aliases", ())):
            if alias:
                out[alias.lower()] = name
    return out


def catalog_ids() -> dict[str, str | None]:
    """Catalog name -> Hugging Face repository id (for listings)."""
    text = (importlib.resources.files("presetdb.offline") / CATALOG_FILE).read_text(encoding="utf-8")
    return {name: entry.get("hf_id") for name, entry in json.loads(text)["models"].items()}


def load_model(spec: str) -> ModelDims:
    """A catalog name (or its Hugging Face id / alias), else a path to a config.json."""
    known = catalog()
    wanted = spec.strip().lower()
    name = wanted if wanted in known else _aliases().get(wanted)
    if name is not None:
        return known[name]
    path = Path(spec).expanduser()
    if path.exists() or spec.endswith(".json") or ("/" in spec and path.parent.exists()):
        return load_config(path)
    raise ModelConfigError(
        f"unknown model {spec!r}: not in the catalog and not a config.json path; "
        f"catalog: {', '.join(sorted(known))}"
    )
