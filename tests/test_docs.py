"""The docs' benchmark tables and the README's headlines come from ``benchmarks/results``.

Every table of ``docs/benchmarks/*.md`` is regenerated here with its script's
``--markdown`` (or ``--summary`` / ``--depths``) function from the result files, and
must appear on its page verbatim: a figure typed by hand, or a result file rerun
without regenerating its page, fails. The README's headline figures are recomputed
from the same files.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
PAGES = ROOT / "docs" / "benchmarks"

#: page → (script, its table function, result files) for every table the page shows.
TABLES: dict[str, list[tuple[str, str, list[str]]]] = {
    "evaluate_reference.md": [
        ("evaluate_reference", "markdown", ["evaluate_reference.json"]),
        ("evaluate_reference", "markdown", ["evaluate_reference_depth30_nfcorpus.json"]),
    ],
    "reranker_depth_length.md": [
        ("reranker_depth_length", "markdown", ["reranker_depth_length.json"]),
    ],
    "faithfulness.md": [
        ("faithfulness", "markdown", ["faithfulness_reranker.json"]),
        ("faithfulness", "markdown", ["faithfulness_minilm.json"]),
    ],
    "relp_vs_patching.md": [
        (
            "relp_vs_patching",
            "markdown",
            ["relp_vs_patching_reranker_64.json", "relp_vs_patching_retriever_64.json"],
        ),
        ("relp_vs_patching", "markdown", ["relp_vs_patching_retriever_query64.json"]),
        (
            "relp_vs_patching",
            "markdown",
            ["relp_vs_patching_reranker.json", "relp_vs_patching_retriever.json"],
        ),
    ],
    "attribution_cost.md": [
        ("attribution_cost", "markdown", ["attribution_cost.json"]),
        ("attribution_cost", "markdown", ["bilrp_cost.json"]),
    ],
    "compression_quality.md": [
        (
            "compression_quality",
            function,
            ["compression_quality_reranker_quick.json", "compression_quality_minilm_quick.json"],
        )
        for function in ("markdown", "summary")
    ]
    + [
        ("compression_quality", function, [f"compression_quality_{model}_full.json"])
        for model in ("minilm", "reranker")
        for function in ("markdown", "summary")
    ]
    + [("compression_quality", "depth_markdown", ["compression_quality_reranker_full.json"])]
    + [
        ("compression_quality", function, ["compression_quality_reranker_recovered.json"])
        for function in ("recovery_markdown", "markdown")
    ],
    "activation_quantization.md": [
        ("activation_quantization", "markdown", ["activation_quantization.json"]),
    ],
    "speed_size.md": [
        ("speed_size", "markdown", ["speed_size_reranker.json"]),
        ("speed_size", "markdown", ["speed_size_retriever.json"]),
        ("speed_size", "markdown", ["speed_size_recovered.json"]),
        ("speed_size", "markdown", ["speed_size_recovered_full.json"]),
        ("speed_size", "markdown", ["speed_size_recovered_full_taylor50.json"]),
        ("speed_size", "markdown", ["speed_size_recovered_full_len256.json"]),
        ("speed_size", "markdown", ["speed_size_recovered_full_served.json"]),
        ("speed_size", "markdown", ["speed_size_reranker_recovered_full.json"]),
        ("speed_size", "markdown", ["speed_size_reranker_drop2_neurons_full.json"]),
        ("speed_size", "markdown", ["speed_size_reranker_unpadded_full.json"]),
        ("speed_size", "markdown", ["speed_size_retriever_recovered_full.json"]),
        ("speed_size", "markdown", ["speed_size_retriever_hidden_full.json"]),
        ("speed_size", "markdown", ["speed_size_retriever_1000steps_full.json"]),
        ("speed_size", "markdown", ["speed_size_retriever_similarity_full.json"]),
        ("speed_size", "markdown", ["speed_size_retriever_labels_full.json"]),
    ],
    "low_rank.md": [("low_rank", "markdown", ["low_rank.json"])],
    "recovery.md": [
        (
            "recovery",
            "markdown",
            ["recovery_reranker_scifact.json", "recovery_reranker_scifact_70.json"],
        ),
        ("recovery", "markdown", ["recovery_reranker_nfcorpus_70_qat.json"]),
        ("recovery", "markdown", ["recovery_reranker_nfcorpus_70_qat_depth100.json"]),
        ("recovery", "markdown", ["recovery_reranker_nfcorpus_50_qat.json"]),
        ("recovery", "markdown", ["recovery_reranker_nfcorpus_taylor50_qat_depth100.json"]),
        ("recovery", "markdown", ["recovery_reranker_nfcorpus_drop3_qat_depth100.json"]),
    ],
    "speed_levers.md": [
        ("speed_levers", "markdown", ["speed_levers.json"]),
        ("speed_levers", "markdown", ["speed_levers_padding.json"]),
    ],
    "index_compression.md": [("index_compression", "markdown", ["index_compression.json"])],
    "distributed_scaling.md": [
        ("distributed_scaling", function, ["distributed_scaling.json"])
        for function in ("markdown", "capacity")
    ],
}


@pytest.fixture(scope="module")
def scripts() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCHMARKS))


def results(*names: str) -> list[dict[str, Any]]:
    return [json.loads((RESULTS / name).read_text(encoding="utf-8")) for name in names]


def test_every_benchmark_script_has_a_page_and_a_markdown_table(scripts) -> None:
    names = {p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert {page.removesuffix(".md") for page in TABLES} == names
    assert {p.name for p in PAGES.glob("*.md")} == set(TABLES)
    for name in names:
        assert callable(scripts(name).markdown), name


def test_every_result_file_is_tabled_on_a_page() -> None:
    tabled = {name for tables in TABLES.values() for *_, files in tables for name in files}
    assert {p.name for p in RESULTS.glob("*.json")} == tabled


@pytest.mark.parametrize(
    ("page", "script", "function", "files"),
    [(page, *table) for page, tables in TABLES.items() for table in tables],
)
def test_each_page_table_is_generated_from_its_result_files(
    scripts, page: str, script: str, function: str, files: list[str]
) -> None:
    table = getattr(scripts(script), function)(results(*files)).strip()
    text = (PAGES / page).read_text(encoding="utf-8")
    assert table in text, f"docs/benchmarks/{page}: regenerate with {script}.py's {function}"
    for name in files:  # and the page says which file and command made it
        assert f"benchmarks/results/{name}" in text


def test_no_page_or_readme_shows_a_machine_path_or_a_run_diary() -> None:
    diary = re.compile(
        r"\bsessions? \d|\b(last|this|next) session\b|\bstill running\b|\bin progress\b"
        r"|\bnot yet run\b|/(?:home|root|tmp|work)/\w|--merge ",
        re.IGNORECASE,
    )
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        found = diary.search(path.read_text(encoding="utf-8"))
        assert found is None, f"{path.relative_to(ROOT)}: {found.group(0)!r}"


def test_the_readme_headlines_match_the_result_files(scripts) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    headlines = dict(
        re.findall(r"^\| \[([^\]]+)\]\(docs/benchmarks/\w+\.md\) \| (.*) \|$", readme, re.M)
    )
    assert len(headlines) == len(TABLES)

    line = headlines["Speed and size"]
    [reranker_run] = results("speed_size_reranker_unpadded_full.json")
    systems = {s["system"]: s for s in reranker_run["../shared/assets/models/minilm-l6-reranker"]}
    assert reranker_run["_meta"]["padding_removed_in_relcomp_bundles"]
    best = systems[
        "relcomp top 2 layers dropped + int8-aware recovery at 256 tokens on nfcorpus + int8"
    ]
    reference, peer = systems["ORT fp32"], systems["ORT int8 (optimum avx2)"]
    torch_fp32 = systems["torch fp32"]
    assert f"({best['size_mb']:.1f} MB" in line
    assert f"{reference['size_mb'] / best['size_mb']:.2f}× smaller" in line
    assert f"at {best['pairs_per_s'] / torch_fp32['pairs_per_s']:.2f}× torch fp32" in line
    over_peer = best["pairs_per_s"] / peer["pairs_per_s"]
    assert f"{over_peer:.2f}× the optimum int8 peer" in line

    def lost(system: dict, data: str, reference: dict = reference) -> float:
        return 100 * (reference["ndcg@10"][data] - system["ndcg@10"][data])

    p_values = best["p_value_vs_torch"]
    assert f"loses {lost(best, 'nfcorpus'):.2f} nDCG@10 points on nfcorpus" in line
    assert f"(p {p_values['nfcorpus']:.2f})" in line
    assert f"none on scifact ({-lost(best, 'scifact'):+.2f}, p {p_values['scifact']:.2f})" in line
    # the peer is scored in the same run, on the same candidates
    peer_lost = [lost(peer, data) for data in ("nfcorpus", "scifact")]
    assert f"(the peer {peer_lost[0]:.2f} and {peer_lost[1]:.2f})" in line
    checks = reranker_run["_meta"]["targets"]["../shared/assets/models/minilm-l6-reranker"]
    measured = checks["plans"][best["system"]]["checks"]
    assert all(c["met"] is True for c in measured.values())
    assert all(
        lost(best, data) < loss
        for data, loss in zip(("nfcorpus", "scifact"), peer_lost, strict=True)
    )
    assert "every target met" in line
    [retriever_run] = results("speed_size_retriever_labels_full.json")
    rows = {s["system"]: s for s in retriever_run["all-MiniLM-L6-v2"]}
    retriever_checks = retriever_run["_meta"]["targets"]["all-MiniLM-L6-v2"]
    retriever_best = rows[retriever_checks["best"]]
    assert "300 with judged positives" in retriever_best["system"]
    assert all(
        c["met"] is True
        for c in retriever_checks["plans"][retriever_best["system"]]["checks"].values()
    )
    retriever_fp32, retriever_peer = rows["ORT fp32"], rows["ORT int8 (optimum avx2)"]
    retriever_torch = rows["torch fp32"]
    retriever_p = retriever_best["p_value_vs_torch"]
    gained = [-lost(retriever_best, d, retriever_fp32) for d in ("nfcorpus", "scifact")]
    retriever_peer_gained = [
        -lost(retriever_peer, d, retriever_fp32) for d in ("nfcorpus", "scifact")
    ]
    assert (
        "all-MiniLM-L6-v2's best plan, Taylor 70 % recovered on the collection it serves, "
        "then trained on its train/dev judgements "
        f"({retriever_best['size_mb']:.1f} MB), runs at "
        f"{retriever_best['pairs_per_s'] / retriever_torch['pairs_per_s']:.2f}× torch fp32 and "
        f"{retriever_best['pairs_per_s'] / retriever_peer['pairs_per_s']:.2f}× the peer and "
        f"gains {gained[0]:.2f} nDCG@10 points on nfcorpus (p {retriever_p['nfcorpus']:.2f}) "
        f"and {gained[1]:.2f} on scifact (p {retriever_p['scifact']:.4f}) "
        f"(the peer {retriever_peer_gained[0]:+.2f} and "
        f"{retriever_peer_gained[1]:+.2f}): every target met" in line
    )

    [attribution] = results("attribution_cost.json")
    line = headlines["Attribution cost"]
    assert f"{attribution['attnlrp_over_forward']:.2f}× one forward" in line
    assert f"LIG-50 is {attribution['lig_over_attnlrp']:.1f}× AttnLRP" in line

    [faithfulness] = results("faithfulness_reranker.json")
    line = headlines["Faithfulness"]
    assert f"ΔA^F {faithfulness['attnlrp']['delta_af']:.3f}" in line
    assert f"LIG's {faithfulness['ig']['delta_af']:.3f}" in line

    quality = scripts("compression_quality")
    line = headlines["Compression quality"]
    for model, name in (("minilm", "all-MiniLM-L6-v2"), ("reranker", "the reranker")):
        rows = quality.summary(results(f"compression_quality_{model}_full.json")).splitlines()[2:]
        cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
        met, judged = (sum(int(c[4].split(" of ")[i]) for c in cells) for i in (0, 1))
        assert f"{met} of {judged} for {name}" in line
    [recovered] = results("compression_quality_reranker_recovered.json")
    rows = {r["method"]: r for r in recovered["minilm-l6-reranker"]["scifact"]["prune-structured"]}
    [claim] = recovered["_meta"]["claims"]
    assert (
        f"{claim['best_blind'].capitalize()}'s plan recovers best "
        f"({rows[claim['best_blind']]['ndcg@10']:.4f} against relevance's "
        f"{rows['relevance']['ndcg@10']:.4f} on scifact, p {claim['p_value']:.3f})"
    ) in line

    [scaling] = results("distributed_scaling.json")
    rows = {(r["system"], r["workers"]): r for r in scaling["rows"]}
    one, two = rows[("Ray, local", 1)], rows[("Ray, local", 2)]
    speedup = one["wall_s"] / two["wall_s"]
    cpu_speedup = one["actors"][0]["cpu_s"] / max(a["cpu_s"] for a in two["actors"])
    line = headlines["Distributed scaling"]
    assert (
        f"{cpu_speedup:.2f}× from 1 to 2 Ray actors in CPU time, {speedup:.2f}× in wall time"
        in line
    )
    assert f"{1000 * scaling['_meta']['cpu_s_per_pair']:.0f} ms of CPU per pair" in line
    assert all(r["max_abs_diff"] == 0 for r in scaling["rows"])
    assert "the same scores" in line


def _anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_readme_and_docs_resolves() -> None:
    for page in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.relative_to(ROOT)}: {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
                assert anchor in {_anchor(h) for h in headings}, (
                    f"{page.relative_to(ROOT)}: {target}"
                )
