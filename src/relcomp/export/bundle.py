"""``export_bundle``: a model and its plan in, an ONNX Runtime bundle out (or nothing at all).

The plan is realised where each action can be:

=============================  ==========================================================
action                         realised as
=============================  ==========================================================
``prune_heads``,               removed for real in torch (:func:`prune_physically`) before
``prune_neurons``              export: smaller MatMuls, the only structural speed-up
``prune_weights``              zeros in the dense torch weights (no ORT speed or size gain)
``low_rank``                   factorised for real (:func:`factorise_physically`): two
                               MatMuls of ``rank`` each, fewer weights and multiply-adds;
                               the module's precision and input actions move to the factors
``sparsify``                   ``Where(|x| < t, 0, x)`` traced before the MatMul (no gain)
``fp16``                       weights rounded through float16, run in float32
``int8``                       ``quantize_dynamic`` on exactly those nodes
``int8(activations=True)``     ``quantize_static``, ranges calibrated on real pairs
``int4(block_size=B)``         ``MatMulNBits`` on exactly those nodes
``fp32`` / not in the plan     left alone
=============================  ==========================================================

The bundle is built in a temporary folder beside ``out_dir``; parity is measured and
the quality gate run on the ONNX model as written, and only then is the folder renamed
into place. A failed gate (or any error) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from relcomp._io import atomic_directory, atomic_write_json
from relcomp.artifacts import EXPORT_BUNDLE_FILE, CompressionPlan, ExportBundle
from relcomp.checks import check_output_location
from relcomp.compression import (
    FP16,
    Action,
    Int8,
    LowRank,
    PlanError,
    PrecisionAction,
    PruneWeights,
    Sparsify,
    active_compression,
    compress_,
    factorise_physically,
    parameter_count,
    plan_after_pruning,
    prune_physically,
    resolve_plan,
)
from relcomp.errors import RelcompError
from relcomp.export.convert import Exporter, export_onnx
from relcomp.export.first_token import first_token_last_layer
from relcomp.export.graph import onnx_size
from relcomp.export.ort_realise import realise_for_ort
from relcomp.export.parity import ParityGroups, check_parity
from relcomp.export.remove_padding import remove_padding as unpad
from relcomp.models.base import RankingModel
from relcomp.models.onnx_backend import is_bundle, load_bundle
from relcomp.models.saving import copy_model_files

if TYPE_CHECKING:  # the gate is evaluation's; export only calls what it is given
    from relcomp.evaluation.gate import GateResult

__all__ = ["PARITY_FILE", "PLAN_FILE", "default_variant", "export_bundle"]

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
PARITY_FILE = "parity.json"
_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BUNDLE_FILES = {EXPORT_BUNDLE_FILE, PLAN_FILE, PARITY_FILE}
_TWO_GB = 2**31 - 2**20  # protobuf's limit, with room for the graph itself


def default_variant(plan: CompressionPlan | None) -> str:
    """``fp32`` without a plan; the plan's method and fingerprint otherwise.

    Example:
        >>> default_variant(None)
        'fp32'
        >>> default_variant(CompressionPlan("m", {"_default": "int8"}, method="uniform"))[:8]
        'uniform-'
    """
    if plan is None:
        return "fp32"
    method = re.sub(r"[^A-Za-z0-9_.-]+", "-", plan.method).strip("-.") or "plan"
    return f"{method[:40]}-{plan.fingerprint()[:8]}"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("relcomp", "torch", "transformers", "optimum-onnx", "onnxruntime", "onnx"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            continue
    return found


def _check_inputs(
    model: RankingModel,
    out_dir: Path,
    variant: str,
) -> None:
    if getattr(model, "backend", "torch") != "torch":
        raise RelcompError(f"{model.name} is already an ONNX bundle; export the torch model")
    handle = active_compression(model)
    if handle is not None:
        raise PlanError(
            f"{model.name} is compressed in place ({handle.variant}); remove the handle and "
            "pass the plan to export_bundle, which realises it for ONNX Runtime"
        )
    if not _VARIANT.match(variant):
        raise ValueError(
            f"variant {variant!r}: use letters, digits, '_', '-' and '.' (at most 64), "
            "it becomes onnx/model_<variant>.onnx"
        )
    check_output_location(out_dir)  # read-only or under a file: refused before the export
    if out_dir.exists():
        if not out_dir.is_dir():
            raise RelcompError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not is_bundle(out_dir):
            raise RelcompError(
                f"{out_dir}: exists and is not a relcomp bundle; choose another output folder "
                "(relcomp replaces only its own bundles)"
            )


def _split_actions(
    resolved: Mapping[str, list[Action]],
) -> tuple[dict[str, list[str]], dict[str, PrecisionAction], list[str]]:
    """``(torch-side entries, ONNX precisions, notes)`` from a resolved non-structural plan."""
    torch_side: dict[str, list[str]] = {}
    precisions: dict[str, PrecisionAction] = {}
    counts: Counter[str] = Counter()
    for module, actions in resolved.items():
        for action in actions:
            if isinstance(action, PruneWeights | Sparsify | FP16):
                torch_side.setdefault(module, []).append(str(action))
                counts[action.name] += 1
                if isinstance(action, Sparsify) and action.rank is not None:
                    counts["r_sparse"] += 1
            if isinstance(action, PrecisionAction):
                precisions[module] = action
    notes = []
    if counts["prune_weights"]:
        notes.append(
            f"prune_weights on {counts['prune_weights']} Linears: realised as zeros in dense "
            "weights; ONNX Runtime has no sparse kernel for them, so unstructured sparsity "
            "gives no speed and no size gain in this bundle"
        )
    if counts["sparsify"]:
        notes.append(
            f"sparsify on {counts['sparsify']} Linears: realised as Where(|x| < threshold, 0, x) "
            "before each MatMul (the plan's outputs); ONNX Runtime has no sparse-activation "
            "kernel, so no speed gain"
            + (
                f"; R-Sparse's low-rank path on {counts['r_sparse']} of them as two more "
                "MatMuls, which cost time and size"
                if counts["r_sparse"]
                else ""
            )
        )
    if counts["fp16"]:
        notes.append(
            f"fp16 on {counts['fp16']} Linears: weights rounded through float16 and run in "
            "float32 (ONNX Runtime's CPU provider has no fast fp16 matrix multiply on x86); "
            "stored at 32 bits"
        )
    # explicit entries per module keep the resolved choice, whatever the plan's precedence was
    return torch_side, precisions, notes


def _factorise(
    model: RankingModel, resolved: Mapping[str, list[Action]]
) -> tuple[RankingModel, dict[str, list[Action]], list[str]]:
    """``low_rank`` carried out for real: ``(factorised model, resolved plan, notes)``.

    Each factorised Linear ``M`` becomes ``M.down`` then ``M.up``; its other actions
    move to the factors: a precision to both, ``sparsify`` and activation
    quantization to ``M.down``, which reads ``M``'s input (``M.up`` keeps the weight
    precision only, as the plan's simulation quantizes no inner activation).
    """
    chosen = {m: a for m, a in resolved.items() if any(isinstance(x, LowRank) for x in a)}
    if not chosen:
        return model, dict(resolved), []
    entries = tuple(
        (module, str(action))
        for module, actions in chosen.items()
        for action in actions
        if isinstance(action, LowRank | PrecisionAction)
    )
    factorised = factorise_physically(
        model, CompressionPlan(model.name, entries, method="export/factorise")
    )
    moved = {m: list(a) for m, a in resolved.items() if m not in chosen}
    for module, actions in chosen.items():
        down, up = moved.setdefault(f"{module}.down", []), moved.setdefault(f"{module}.up", [])
        for action in actions:
            if isinstance(action, LowRank):
                continue
            down.append(action)
            if isinstance(action, PrecisionAction):
                up.append(
                    dataclasses.replace(action, activations=False, channelwise=False)
                    if isinstance(action, Int8)
                    else action
                )
    ranks = sorted({a.rank for acts in chosen.values() for a in acts if isinstance(a, LowRank)})
    note = (
        f"low_rank on {len(chosen)} Linears: factorised for real (two MatMuls each, rank "
        f"{', '.join(map(str, ranks))}): {parameter_count(model) - parameter_count(factorised):,} "
        "fewer weights"
    )
    return factorised, {m: a for m, a in moved.items() if a}, [note]


def _torch_plan(model: RankingModel, entries: Mapping[str, list[str]]) -> CompressionPlan:
    pairs = [(module, action) for module, actions in entries.items() for action in actions]
    return CompressionPlan(model=model.name, entries=tuple(pairs), method="export/torch-side")


def _structural_notes(model: RankingModel, pruned: RankingModel) -> list[str]:
    config: Any = pruned.model.config
    heads = {int(k): len(v) for k, v in (config.pruned_heads or {}).items()}
    before = [model.named_linears()[layer.ffn_in].out_features for layer in model.layer_modules()]
    linears = pruned.named_linears()
    widths = [linears[layer.ffn_in].out_features for layer in pruned.layer_modules()]
    dropped = len(before) - len(widths)
    note = (
        f"structured pruning realised in torch before export: {sum(heads.values())} heads"
        + (f", {dropped} whole layers" if dropped else "")
        + " and FFN neurons removed ("
        + f"{sum(before)} → {sum(widths)} neurons)"
    )
    if len(set(widths)) > 1:
        note += f"; per-layer FFN widths {widths} (config.pruned_intermediate_sizes)"
    return [note]


def _word_embeddings_shape(model: RankingModel) -> tuple[int, int]:
    name = model.adapter.embedding_names(model.model)["word_embeddings"]
    embedding: Any = model.model.get_submodule(name)
    return int(embedding.weight.shape[0]), int(embedding.weight.shape[1])


def _calibration_feeds(
    model: RankingModel,
    pairs: Sequence[tuple[str, str]],
    inputs: Sequence[str],
    batch_size: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Tokenised calibration batches, as the model tokenises (without counting truncation)."""
    feeds = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        if model.kind == "cross-encoder":
            batch = model.tokenizer(
                [q for q, _ in chunk],
                [d for _, d in chunk],
                padding=True,
                truncation="longest_first",
                max_length=model.max_length,
                return_tensors="np",
            )
        else:
            texts = [text for pair in chunk for text in pair]
            batch = model.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=model.max_length,
                return_tensors="np",
            )
        feeds.append(
            {name: np.asarray(batch[name], dtype=np.int64) for name in inputs if name in batch}
        )
    return feeds


#: Parity groups whose first candidate is explained for explanation parity.
EXPLANATION_PAIRS = 8


def _explanation_parity(
    reference: RankingModel,
    working: RankingModel,
    rest: CompressionPlan | None,
    groups: ParityGroups,
) -> dict[str, Any]:
    """AttnLRP agreement of the bundle's torch twin with ``reference``; the reason if it cannot be had."""
    from relcomp.attribution.agreement import explanation_agreement
    from relcomp.compression.actions import plan_needs_data

    pairs = [(query, documents[0]) for query, documents in groups.values() if documents]
    pairs = pairs[:EXPLANATION_PAIRS]
    if rest is not None and rest.entries and plan_needs_data(rest.entries):
        return {"skipped": "the plan's torch twin needs calibration statistics"}
    previous = working.max_length
    working.max_length = reference.max_length  # the same tokens on both sides
    try:
        twin = compress_(working, rest) if rest is not None and rest.entries else None
        try:
            return explanation_agreement(
                reference, working, [q for q, _ in pairs], [d for _, d in pairs]
            )
        finally:
            if twin is not None:
                twin.remove()
    except RelcompError as error:  # said in parity.json and the log, never dropped silently
        logger.warning("explanation parity not measured: %s", error)
        return {"skipped": str(error)}
    finally:
        working.max_length = previous


def _save_onnx(model: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > _TWO_GB:
        onnx.save_model(
            model,
            os.fspath(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}_data",
        )
    else:
        onnx.save_model(model, os.fspath(path))


@contextlib.contextmanager
def _torch_side(model: RankingModel, entries: Mapping[str, list[str]]) -> Iterator[None]:
    if not entries:
        yield
        return
    with compress_(model, _torch_plan(model, entries)):
        yield


def export_bundle(
    model: RankingModel,
    out_dir: str | os.PathLike[str],
    *,
    plan: CompressionPlan | str | os.PathLike[str] | None = None,
    calibration_pairs: Sequence[tuple[str, str]] | None = None,
    parity_groups: ParityGroups | None = None,
    parity_source: Mapping[str, Any] | None = None,
    variant: str | None = None,
    optimize: bool = True,
    gate: Callable[[Any], GateResult] | None = None,
    exporter: Exporter = "auto",
    int4_accuracy_level: int | None = None,
    reduce_range: bool = False,
    int8_weight_type: str = "uint8",
    embeddings: str = "fp32",
    first_token: bool = False,
    remove_padding: bool = False,
    explain_against: RankingModel | None = None,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
) -> ExportBundle:
    """Export ``model`` with ``plan`` realised for ONNX Runtime, as a sentence-transformers folder.

    Args:
        model: a torch relcomp model (uncompressed: the plan is applied here).
        out_dir: the bundle folder; an existing relcomp bundle there is replaced, any
            other non-empty folder is refused.
        plan: a :class:`~relcomp.artifacts.CompressionPlan` or its JSON file; ``None``
            exports the model as it is (fp32).
        calibration_pairs: ``(query, document)`` pairs from a dev/train split, for
            ``int8(activations=True)`` (static quantization).
        parity_groups: ``{query id: (query, [documents])}``; parity against ``model``
            is measured on the ONNX model and written to ``parity.json``.
        parity_source: where the groups came from, recorded in ``parity.json``.
        variant: names ``onnx/model_<variant>.onnx``; from the plan by default.
        optimize: onnxruntime's transformer fusions (attention, LayerNorm, GELU).
        gate: called with the ONNX model, read from the unfinished bundle, before the
            bundle may exist: a quality gate (:func:`relcomp.evaluation.gate.quality_gate`,
            composed by :func:`relcomp.pipeline.export`) that returns its result or
            raises :class:`~relcomp.evaluation.gate.QualityGateError`; ``None``: no gate.
        exporter: ``auto`` (optimum, else ``torch.onnx``), ``optimum`` or ``torch``.
        int4_accuracy_level: ``MatMulNBits``' compute type: ``None`` float32 (default),
            4 int8 activations (faster only with VNNI).
        reduce_range: 7-bit int8 weights (see :func:`~relcomp.export.realise_for_ort`).
        int8_weight_type: ``uint8`` (the plan's symmetric grid stored with zero point 128,
            run by ORT's u8×u8 kernel, which cannot saturate on CPUs without VNNI) or
            ``int8`` (u8×s8: faster with VNNI, may saturate without).
        embeddings: ``fp32`` (as the plan, which covers Linears only) or ``int8``: the
            word-embedding table quantized too (noted in the bundle).
        first_token: a cross-encoder's last layer runs its queries, attention output
            and feed-forward block at the first token only (the only one its head
            reads; :func:`~relcomp.export.first_token.first_token_last_layer`); the
            same scores for less work. Ignored, with a note, where it does not apply.
        remove_padding: the token-wise operators (Linears, LayerNorms, GELU) run on the
            batch's real tokens only, attention on the padded layout
            (:func:`~relcomp.export.remove_padding.remove_padding`); the same scores in
            float, less work the more a batch is padded. Attention is then fused as
            ``MultiHeadAttention``, so that the Q, K and V projections, outside it, run
            on real tokens too (1.03–1.04× over the packed ``Attention`` operator on 32
            nfcorpus and 32 scifact pairs at 512 tokens, a one-off reading on one
            thread). Under dynamic int8 the activation scales are taken over real tokens
            only. Gains most on a fused graph (``optimize``); where the graph does not
            allow it (MPNet), the bundle is exported padded and a note says why.
        explain_against: with ``parity_groups``, explanation parity is measured too:
            the AttnLRP token relevance of the bundle's torch twin (``model`` with the
            plan simulated by ``compress_``) against this model's, on the first
            candidate of up to 8 groups (``parity.json``'s ``explanation``). ``model``
            itself by default; the uncompressed model when ``model`` is a recovered one.
        batch_size: pairs per forward pass for parity.
        show_progress_bar: for parity.

    Returns:
        The :class:`~relcomp.artifacts.ExportBundle`, also saved as ``relcomp_bundle.json``.

    Raises:
        PlanError: the plan does not fit the model (unknown module, impossible action).
        QualityGateError: ``gate`` failed the ONNX model;
            nothing is written.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> bundle = export_bundle(model, "runs/minilm-int8",
        ...                        plan=CompressionPlan(model.name, {"_default": "int8"}))  # doctest: +SKIP
        >>> bundle.onnx_file, round(bundle.size_mb)  # doctest: +SKIP
        ('onnx/model_manual-….onnx', 23)
    """
    out_dir = Path(out_dir)
    if plan is not None and not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.load(plan)
    variant = variant or default_variant(plan)
    _check_inputs(model, out_dir, variant)
    structural, rest = plan.split_structural() if plan is not None else (None, None)
    if plan is not None:
        resolve_plan(plan, model)  # the plan must fit before anything is written
    notes: list[str] = []
    working = model
    if structural is not None and structural.entries:
        working = prune_physically(model, structural)
        notes.extend(_structural_notes(model, working))
        if rest is not None:  # dropped layers renumber the ones after them
            rest = plan_after_pruning(rest, model, structural)
    resolved = resolve_plan(rest, working) if rest is not None and rest.entries else {}
    working, resolved, factor_notes = _factorise(working, resolved)
    notes.extend(factor_notes)
    torch_entries, precisions, torch_notes = _split_actions(resolved)
    notes.extend(torch_notes)
    channelwise = sorted(m for m, a in precisions.items() if isinstance(a, Int8) and a.channelwise)
    if channelwise:
        raise PlanError(
            f"int8(activations=True, channelwise=True) on {len(channelwise)} module(s), e.g. "
            f"{channelwise[0]!r}, is simulated in torch only: ONNX Runtime's int8 MatMul takes "
            "one input scale per tensor, and in a post-LayerNorm encoder the scales cannot "
            "be folded into the LayerNorm (its output is the residual stream). Export "
            "int8(activations=True) instead"
        )
    if (
        any(isinstance(a, Int8) and a.activations for a in precisions.values())
        and not calibration_pairs
    ):
        raise PlanError(
            "the plan asks for int8(activations=True) (static quantization): pass calibration "
            "pairs from a dev/train split (relcomp export -d DATA)"
        )
    onnx_file = f"onnx/model_{variant}.onnx"
    with (
        atomic_directory(out_dir) as folder,
        tempfile.TemporaryDirectory(prefix="relcomp-export-") as scratch_dir,
    ):
        scratch = Path(scratch_dir)
        exported = scratch / "model.onnx"
        cut = first_token_last_layer(working) if first_token else contextlib.nullcontext(False)
        with _torch_side(working, torch_entries), cut as applied:
            used, export_notes = export_onnx(working, exported, exporter=exporter)
        notes.extend(export_notes)
        if first_token:
            notes.append(
                "last layer at the first token only (queries, attention output, feed-forward)"
                if applied
                else "first-token last layer asked for but not applicable (bi-encoder or "
                f"{working.adapter.family} attention): exported in full"
            )
        fp32_size = onnx_size(exported)
        graph = onnx.load(os.fspath(exported))
        inputs = [node.name for node in graph.graph.input]
        feeds = (
            _calibration_feeds(working, list(calibration_pairs), inputs)
            if calibration_pairs
            else None
        )
        realisation = realise_for_ort(
            graph,
            linears=working.named_linears(),
            layers=working.layer_modules(),
            precisions=precisions,
            work_dir=scratch / "work",
            optimize=optimize,
            calibration_feeds=feeds,
            reduce_range=reduce_range,
            int8_weight_type=int8_weight_type,
            embeddings=embeddings,
            word_embeddings_shape=_word_embeddings_shape(working),
            int4_accuracy_level=int4_accuracy_level,
            separate_qkv=remove_padding,
        )
        notes.extend(realisation.notes)
        realised = realisation.model
        fusion = {**realisation.fusion, "attention_operator": realisation.attention}
        if remove_padding:
            removal = unpad(realised)
            realised = removal.model
            notes.append(removal.note)
            fusion["packed_operators"] = removal.packed_nodes
        _save_onnx(realised, folder / onnx_file)
        copy_model_files(model.path, folder, skip=_BUNDLE_FILES)
        config: Any = working.model.config
        config.save_pretrained(folder)
        if not (folder / "tokenizer.json").is_file():
            working.tokenizer.save_pretrained(folder)
        if plan is not None:
            plan.save(folder / PLAN_FILE)
        for note in notes:
            logger.info("export note: %s", note)
        bundle = ExportBundle(
            model=model.name,
            model_kind=model.kind,
            family=model.adapter.family,
            variant=variant,
            onnx_file=onnx_file,
            exporter=used,
            size_bytes=onnx_size(folder / onnx_file),
            fp32_size_bytes=fp32_size,
            max_length=model.max_length,
            plan=(
                {"method": plan.method, "fingerprint": plan.fingerprint(), "file": PLAN_FILE}
                if plan is not None
                else {}
            ),
            modules=realisation.modules,
            nodes={label: tuple(nodes) for label, nodes in realisation.nodes.items()},
            fusion=fusion,
            notes=tuple(notes),
            versions=_versions(),
        )
        bundle.save(folder / EXPORT_BUNDLE_FILE)
        candidate = load_bundle(folder, name=os.fspath(out_dir))
        if parity_groups:
            parity = check_parity(
                model,
                candidate,
                parity_groups,
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                source=parity_source,
            )
            explanation = _explanation_parity(
                explain_against or model, working, rest, parity_groups
            )
            parity = dataclasses.replace(parity, explanation=explanation)
            atomic_write_json(folder / PARITY_FILE, parity.to_dict())
            bundle = dataclasses.replace(bundle, parity=parity.summary())
        if gate is not None:
            bundle = dataclasses.replace(bundle, gate=gate(candidate).summary())
        bundle.save(folder / EXPORT_BUNDLE_FILE)
    logger.info(
        "exported %s to %s (%s, %.2f MB)", model.name, out_dir, onnx_file, bundle.size_bytes / 1e6
    )
    return bundle
