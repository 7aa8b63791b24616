"""A bench run: every (batch size, norm, mode) measured, then the feeding rates and the trainings at once,
and what the run logs of them: one table row per norm and batch size, its metrics and its Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from benchmarks import feeding, sharing
from benchmarks.feeding import FeedRate
from benchmarks.sharing import ShareRate
from benchmarks.throughput import BenchSpec, TrainRate, train_rate
from resnorm import fast, markdown


def run(
    spec: BenchSpec, device: torch.device, progress=print
) -> tuple[list[TrainRate], list[FeedRate], list[ShareRate]]:
    """Every (batch size, norm, mode), then the feeding rates, then ``share``: that many trainings
    at once on the device (``spec.shared()``), each in its own process."""
    rates = []
    if "fast" in spec.modes:  # before anything touches torch's compiler: it fixes its cache folder on first use
        fast.configure_backends(fast.resolve_speed("fast", device, 32), device)
    for batch_size in spec.batch_sizes:
        for norm in spec.norms:
            for mode in spec.modes:
                r = train_rate(spec, mode, norm, batch_size, device)
                progress(
                    f"{mode:>5} {norm:>8} bs {batch_size:>4}: {r.images_per_second:10.1f} img/s "
                    f"({r.ms_per_step:.2f} ms/step, warm-up {r.warmup_seconds:.1f} s)"
                )
                rates.append(r)
    feeds = feeding.feed_rates(spec.image_size, device, spec.feed_files) if spec.feed_files else []
    shares = []
    for k in spec.share:
        shares.append(sharing.shared_rate(spec, k, device))
        what = spec.shared()
        progress(
            f"{k} at once ({what['mode']} {what['norm']} bs {what['batch_size']}): "
            f"{shares[-1].images_per_second:10.1f} img/s together"
        )
    return rates, feeds, shares


def table(rates: Sequence[TrainRate]) -> list[dict]:
    """One row per (norm, batch size): each mode's img/s and ms/step, and fast/plain."""
    rows: dict[tuple[str, int], dict] = {}
    for r in rates:
        row = rows.setdefault((r.norm, r.batch_size), {"norm": r.norm, "batch_size": r.batch_size})
        row[f"{r.mode}_img_per_s"] = round(r.images_per_second, 1)
        row[f"{r.mode}_ms_per_step"] = round(r.ms_per_step, 3)
        if r.mode == "fast":
            row["fast_compile_s"] = round(r.compile_seconds, 1)
        if r.peak_memory_mb is not None:
            row[f"{r.mode}_peak_mb"] = round(r.peak_memory_mb)
    for row in rows.values():
        if "plain_img_per_s" in row and "fast_img_per_s" in row:
            row["fast_over_plain"] = round(row["fast_img_per_s"] / row["plain_img_per_s"], 2)
    reference = {b: row.get("fast_img_per_s") for (norm, b), row in rows.items() if norm == "torch_bn"}
    for (_, b), row in rows.items():
        if reference.get(b) and "fast_img_per_s" in row:
            row["fast_over_torch_bn"] = round(row["fast_img_per_s"] / reference[b], 2)
    return list(rows.values())


def as_dicts(items) -> list[dict]:
    return [asdict(i) for i in items]


def metrics(rates: Sequence[TrainRate], feeds: Sequence[FeedRate], shares: Sequence[ShareRate]) -> dict[str, float]:
    """The MLflow metrics of a bench run: ``{mode}_{norm}_bs{b}_img_per_s``, ``..._ms_per_step``,
    ``..._compile_s`` (fast), ``fast_over_plain_{norm}_bs{b}``, ``feed_{key}_img_per_s``, ``share{k}_img_per_s``."""
    out: dict[str, float] = {}
    for r in rates:
        key = f"{r.mode}_{r.norm}_bs{r.batch_size}"
        out[f"{key}_img_per_s"] = r.images_per_second
        out[f"{key}_ms_per_step"] = r.ms_per_step
        if r.mode == "fast":
            out[f"{key}_compile_s"] = r.compile_seconds
    for r in rates:
        plain = out.get(f"plain_{r.norm}_bs{r.batch_size}_img_per_s")
        if r.mode == "fast" and plain:
            out[f"fast_over_plain_{r.norm}_bs{r.batch_size}"] = r.images_per_second / plain
    out.update({f"feed_{f.key}_img_per_s": f.images_per_second for f in feeds})
    out.update({f"share{sh.processes}_img_per_s": sh.images_per_second for sh in shares})
    return out


@dataclass
class Report:
    """A bench run's tables (one row per norm and batch size; feeding; sharing) and its Markdown."""

    train: pd.DataFrame
    feed: pd.DataFrame
    share: pd.DataFrame
    markdown: str


def report(rates, feeds, shares, title: str) -> Report:
    frame = pd.DataFrame(table(rates)).set_index(["norm", "batch_size"])
    feed = pd.DataFrame(as_dicts(feeds), columns=["pipeline", "images_per_second", "detail"])
    shared = pd.DataFrame(as_dicts(shares))
    if shares and shares[0].processes == 1:
        shared["over_one"] = shared["images_per_second"] / shares[0].images_per_second
    text = [f"# {title}", "", markdown.table(frame.set_axis([f"{norm} bs{bs}" for norm, bs in frame.index]))]
    if feeds:
        text += ["", "## feeding the model (img/s)", "", markdown.table(feed.set_index("pipeline").round(1))]
    if shares:
        text += [
            "",
            "## trainings at once on one device (img/s together)",
            "",
            markdown.table(shared.set_index("processes").round(2)),
        ]
    fallbacks = sorted({r.fallback for r in rates if r.fallback})
    if fallbacks:
        text += ["", "torch.compile failed, measured eagerly: " + "; ".join(fallbacks)]
    return Report(frame, feed, shared, "\n".join(text) + "\n")
