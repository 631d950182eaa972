"""`promptrl report DIR --html`: one self-contained page (`report.html`) for a run or a sweep,
interactive and offline: plotly.js, the styles and the page's own script are inlined, so the
file opens from disk with no network and can be mailed or attached to a wandb run.

A run's page: its results, the curves over steps (reward mean and max, training accuracy, KL,
entropy, response length, best reward so far against target calls, dev accuracy at each anchor
check marked update / keep / rollback), every sampled prompt in a searchable, sortable table
(the final queue highlighted with its dev and test scores), and, where the run logs it, its
candidates' lineage as a tree. Hovering a point of a curve shows that step's prompts beside the
curves; clicking it filters the table to that step.

A sweep's page: the tables of `report.md` (means with 95% t-intervals) and the paired
comparisons (`--compare`, `--baseline`, and against the manual and empty prompts where the runs
scored them), each group's curves with its seeds' band (min..max) and each seed faint behind it,
best reward so far against target calls (each run held at its best to the end), the final queue
of every run and all sampled prompts.

Per-prompt values come from optional metrics keys, parallel to a row's `prompts` (same length,
same order; null where a prompt was not scored in that step): `prompt_rewards`, `prompt_accs`,
`prompt_lens` (agent tokens). Without them the reward and accuracy columns hold the step's means
(marked ≈). Lineage: `prompt_parents` (per prompt, a list of the ids it was proposed from) and
optionally `prompt_ids` (per prompt, its id; default: the prompt text itself). The tables and
the statistics are report.py's; nothing is computed twice.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from promptrl import progress
from promptrl.report import (
    BASELINES,
    Comparison,
    Run,
    best_so_far,
    compare_cells,
    compare_to_baseline,
    curve,
    load_run,
    searched,
    summarize,
    table_cells,
)

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DECISIONS = {  # anchor decision -> (marker symbol, colour, legend name)
    "update": ("triangle-up", "#2ca02c", "anchor update"),
    "keep": ("circle", "#7f7f7f", "keep"),
    "rollback": ("triangle-down", "#d62728", "rollback"),
}
STEP_CURVES = [  # (id, [(metrics key, trace name, dash)], title, y axis)
    ("reward", [("reward_mean", "mean", "solid"), ("reward_max", "max", "dot")], "reward of the step's prompts", "reward"),
    ("acc", [("acc_mean", "mean", "solid"), ("acc_max", "max", "dot")], "training accuracy of the step's prompts", "accuracy"),
    ("kl", [("kl", "KL", "solid")], "KL to the reference (sequence level)", "KL"),
    ("entropy", [("entropy", "entropy", "solid")], "policy entropy", "nats / token"),
    ("response_len", [("response_len", "length", "solid")], "response length", "tokens"),
]
PER_PROMPT = ("prompt_rewards", "prompt_accs", "prompt_lens")
HOVER_PROMPT_CHARS = 70
PAGE_ROWS = 300  # rows a table shows before "show more"


# --- what the runs hold ------------------------------------------------------------------------
def per_prompt(row: dict, key: str, n: int) -> list[float | None]:
    """A row's per-prompt list `key`, aligned with its n prompts; all None when absent or misaligned."""
    values = row.get(key)
    if not isinstance(values, list) or len(values) != n:
        return [None] * n
    return [float(v) if _number(v) else None for v in values]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def step_rows(run: Run) -> list[dict]:
    return [row for row in run.rows if "anchor" not in row and _number(row.get("step"))]


def sampled_prompts(run: Run) -> list[dict]:
    """Every prompt a run's metrics log as sampled (rows with `prompts`), in order, with its step,
    per-prompt reward, accuracy and token count where logged (else None), and its step's means."""
    out = []
    for row in step_rows(run):
        prompts = row.get("prompts")
        if not isinstance(prompts, list):
            continue
        n = len(prompts)
        rewards, accs, lens = (per_prompt(row, k, n) for k in PER_PROMPT)
        for i, p in enumerate(prompts):
            out.append({"step": int(row["step"]), "prompt": "" if p is None else str(p), "reward": rewards[i], "acc": accs[i],
                        "tokens": lens[i], "step_reward": _float(row.get("reward_mean")), "step_acc": _float(row.get("acc_mean"))})
    return out


def _float(v) -> float | None:
    return float(v) if _number(v) else None


def queue(run: Run) -> list[dict]:
    """The final queue from results.json (rank order), each item marked `selected` when it is the
    dev-selected prompt."""
    results = run.results or {}
    items = results.get("queue") if isinstance(results.get("queue"), list) else []
    chosen = results.get("best_prompt") if results.get("kept_baseline") else results.get("prompt")
    return [{**q, "rank": i + 1, "selected": q.get("prompt") == chosen} for i, q in enumerate(items) if isinstance(q, dict)]


def lineage(run: Run) -> dict[str, dict]:
    """id -> {prompt, step, reward, parents} from rows that log `prompt_parents`; parents named but
    never logged as prompts become nodes of their own (their text where ids are texts)."""
    nodes: dict[str, dict] = {}
    texts_are_ids = not any(isinstance(row.get("prompt_ids"), list) for row in run.rows)
    for row in step_rows(run):
        prompts, parents = row.get("prompts"), row.get("prompt_parents")
        if not (isinstance(prompts, list) and isinstance(parents, list) and len(parents) == len(prompts)):
            continue
        ids = row.get("prompt_ids")
        ids = ids if isinstance(ids, list) and len(ids) == len(prompts) else prompts
        rewards = per_prompt(row, "prompt_rewards", len(prompts))
        for i, p in enumerate(prompts):
            ps = parents[i] if isinstance(parents[i], list) else ([] if parents[i] is None else [parents[i]])
            node = nodes.setdefault(str(ids[i]), {"prompt": str(p), "step": int(row["step"]), "reward": rewards[i], "parents": []})
            node["parents"] = list(dict.fromkeys(node["parents"] + [str(x) for x in ps if x is not None and str(x) != str(ids[i])]))
            if node["reward"] is None:
                node["reward"] = rewards[i]
    for node in list(nodes.values()):
        for parent in node["parents"]:
            if parent not in nodes:
                nodes[parent] = {"prompt": parent if texts_are_ids else f"(candidate {parent}: not logged)", "step": None,
                                 "reward": None, "parents": []}
    return nodes


def tree_layout(nodes: dict[str, dict]) -> tuple[dict[str, tuple[float, float]], dict[str, str | None]]:
    """Positions for a node-link drawing, and each node's tree parent: a node hangs under its first
    logged parent; x is the step it was proposed at (its depth where no node has a step), y its
    leaf order (a parent at its children's mean)."""
    primary = {k: next((p for p in n["parents"] if p in nodes), None) for k, n in nodes.items()}
    for k in [k for k in nodes if _cyclic(k, primary)]:
        primary[k] = None  # a parent chain that loops back (bad ids): its nodes become roots
    by_step = lambda k: (nodes[k]["step"] is None, nodes[k]["step"] or 0, k)
    children: dict[str | None, list[str]] = {}
    for k in sorted(nodes, key=by_step):
        children.setdefault(primary[k], []).append(k)
    preorder, depth = [], {}
    stack = [(r, 0) for r in reversed(children.get(None, []))]
    while stack:  # iterative: an OPRO lineage can be deeper than Python's recursion limit
        k, d = stack.pop()
        preorder.append(k)
        depth[k] = d
        stack.extend((c, d + 1) for c in reversed(children.get(k, [])))
    y: dict[str, float] = {}
    for k in preorder:
        if not children.get(k):
            y[k] = float(len(y))
    for k in reversed(preorder):
        if children.get(k):
            y[k] = sum(y[c] for c in children[k]) / len(children[k])
    if all(n["step"] is None for n in nodes.values()):
        return {k: (float(depth[k]), y[k]) for k in preorder}, primary

    def x(k):  # a parent that was never logged: just before its first child
        if nodes[k]["step"] is not None:
            return float(nodes[k]["step"])
        steps = [nodes[c]["step"] for c in children.get(k, []) if nodes[c]["step"] is not None]
        return float(max(0, min(steps) - 1)) if steps else 0.0

    return {k: (x(k), y[k]) for k in preorder}, primary


def _cyclic(k: str, primary: dict[str, str | None]) -> bool:
    seen, cur = set(), primary.get(k)
    while cur is not None and cur not in seen:
        if cur == k:
            return True
        seen.add(cur)
        cur = primary.get(cur)
    return False


# --- figures -------------------------------------------------------------------------------------
def _figure(title: str, x_title: str, y_title: str, height: int = 300):
    import plotly.graph_objects as go

    axis = dict(showgrid=True, gridcolor="#e5e5e5", zeroline=False, linecolor="#999", ticks="outside", tickcolor="#999")
    return go.Figure(layout=dict(
        template="none", title=dict(text=title, font=dict(size=13), x=0.01, xanchor="left", y=0.985, yanchor="top"),
        height=height, margin=dict(l=55, r=15, t=50, b=45), hovermode="closest", font=dict(family="system-ui, sans-serif", size=12),
        xaxis=dict(title=dict(text=x_title), **axis), yaxis=dict(title=dict(text=y_title), **axis),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1, font=dict(size=11), bgcolor="rgba(255,255,255,0.7)"),
        hoverlabel=dict(align="left", font=dict(size=11)),
    ))


def _fig_html(fig, div_id: str) -> str:
    height = fig.layout.height or 300
    inner = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_height=f"{height}px",
                        config={"displaylogo": False, "responsive": True, "displayModeBar": False})
    return f'<div class="fig">{inner}</div>'


def _hover_prompts(prompts: list[str]) -> str:
    """A step's prompts for a tooltip: escaped (plotly reads tags in hover text), cut short."""
    lines = []
    for p in prompts:
        one = " ".join(p.split())
        one = one if len(one) <= HOVER_PROMPT_CHARS else one[:HOVER_PROMPT_CHARS - 1] + "…"
        lines.append("· " + (html.escape(one) if one else "(empty)"))
    return "<br>".join(lines)


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


FIGURES = len(STEP_CURVES) + 2  # the curves run_figures and sweep_figures draw at most: STEP_CURVES, dev accuracy, best so far


def run_figures(run: Run, ri: int, bar: progress.Bar | None = None) -> list[str]:
    """The run page's curves; every step point carries [run index, step] for the prompts panel.
    `bar` advances by one for each of the FIGURES, drawn or not."""
    import plotly.graph_objects as go

    bar = bar or progress.Bar()
    rows = step_rows(run)
    prompts_at = {int(r["step"]): [str(p) for p in r["prompts"]] for r in rows if isinstance(r.get("prompts"), list)}
    decisions = [r for r in run.rows if r.get("anchor") in DECISIONS and _number(r.get("step"))]
    figs = []
    for fid, keys, title, y_title in STEP_CURVES:
        fig = _figure(title, "step", y_title)
        for j, (key, name, dash) in enumerate(keys):
            pts = [(int(r["step"]), float(r[key])) for r in rows if _number(r.get(key))]
            if not pts:
                continue
            steps = [s for s, _ in pts]
            fig.add_trace(go.Scatter(
                x=steps, y=[v for _, v in pts], name=name, mode="lines+markers" if len(pts) < 60 else "lines",
                line=dict(color=COLORS[j], dash=dash, width=1.6), marker=dict(size=4), customdata=[[ri, s] for s in steps],
                text=[_hover_prompts(prompts_at.get(s, [])) for s in steps],
                hovertemplate=f"step %{{x}} · {name} %{{y:.3f}}<br>%{{text}}<extra></extra>"))
        if not fig.data:
            bar.advance()
            continue
        if fid == "reward":
            for d in decisions:
                if d["anchor"] != "keep":
                    fig.add_vline(x=d["step"], line=dict(color=DECISIONS[d["anchor"]][1], width=1, dash="dash"), opacity=0.5)
        figs.append(_fig_html(fig, f"fig-{fid}"))
        bar.advance()
    checks = [d for d in decisions if _number(d.get("policy_dev_acc"))]
    if checks:
        fig = _figure("dev accuracy at anchor checks", "step", "dev accuracy")
        steps = [int(d["step"]) for d in checks]
        fig.add_trace(go.Scatter(x=steps, y=[d["policy_dev_acc"] for d in checks], mode="lines", name="policy",
                                 line=dict(color=COLORS[0], width=1.4), hoverinfo="skip"))
        anchor = [(int(d["step"]), d["anchor_dev_acc"]) for d in checks if _number(d.get("anchor_dev_acc"))]
        if anchor:
            fig.add_trace(go.Scatter(x=[s for s, _ in anchor], y=[v for _, v in anchor], mode="lines+markers", name="anchor",
                                     line=dict(color="#999", width=1, dash="dot"), marker=dict(size=4),
                                     hovertemplate="step %{x} · anchor %{y:.3f}<extra></extra>"))
        for decision, (symbol, color, label) in DECISIONS.items():
            mine = [d for d in checks if d["anchor"] == decision]
            if mine:
                fig.add_trace(go.Scatter(
                    x=[d["step"] for d in mine], y=[d["policy_dev_acc"] for d in mine], mode="markers", name=label,
                    marker=dict(symbol=symbol, size=11, color=color, line=dict(color="black", width=0.6)),
                    customdata=[[ri, int(d["step"])] for d in mine],
                    text=[f"{decision}: policy − anchor {d.get('diff', math.nan):+.3f}" for d in mine],
                    hovertemplate="step %{x} · policy %{y:.3f}<br>%{text}<extra></extra>"))
        figs.append(_fig_html(fig, "fig-dev"))
    bar.advance()
    xs, mean, _, _ = best_so_far([run])
    if xs:
        fig = _figure("best reward so far", "target calls", "reward")
        fig.add_trace(go.Scatter(x=xs, y=mean, mode="lines", line=dict(color=COLORS[0], shape="hv", width=1.8), name="best",
                                 hovertemplate="%{x} calls · best %{y:.3f}<extra></extra>"))
        figs.append(_fig_html(fig, "fig-best"))
    bar.advance()
    return figs


def sweep_figures(runs: list[Run], groups: dict[str, list[int]], smooth: int = 1, bar: progress.Bar | None = None) -> list[str]:
    """Per group: the mean over seeds with its min..max band, each seed faint behind it (its points
    carry [run index, step] for the prompts panel). `bar` advances by one for each of the FIGURES."""
    import plotly.graph_objects as go

    bar = bar or progress.Bar()

    figs = []
    for fid, keys, title, y_title in STEP_CURVES:
        key = keys[0][0]
        fig = _figure(title if len(keys) == 1 else f"{title}: {keys[0][1]}", "step", y_title, height=340)
        for gi, (label, members) in enumerate(groups.items()):
            color = COLORS[gi % len(COLORS)]
            xs, mean, lo, hi = curve([runs[i] for i in members], "step", key, smooth=smooth)
            if not xs:
                continue
            _band(fig, go, xs, lo, hi, color, label)
            for i in members:
                rx, ry, _, _ = curve([runs[i]], "step", key, smooth=smooth)
                fig.add_trace(go.Scatter(
                    x=rx, y=ry, mode="lines", line=dict(color=_rgba(color, 0.35), width=1), legendgroup=label, showlegend=False,
                    customdata=[[i, int(x)] for x in rx],
                    hovertemplate=f"{html.escape(label)} · seed {html.escape(str(runs[i].value('seed')))}<br>"
                                  "step %{x} · %{y:.3f}<extra></extra>"))
            fig.add_trace(go.Scatter(x=xs, y=mean, mode="lines", name=f"{label} (n={len(members)})", legendgroup=label,
                                     line=dict(color=color, width=2.2),
                                     hovertemplate=f"{html.escape(label)} mean · step %{{x}} · %{{y:.3f}}<extra></extra>"))
        if fig.data:
            figs.append(_fig_html(fig, f"fig-{fid}"))
        bar.advance()
    dev = _sweep_dev_figure(runs, groups)
    if dev is not None:
        figs.append(_fig_html(dev, "fig-dev"))
    bar.advance()
    fig = _figure("best reward so far", "target calls", "reward", height=340)
    for gi, (label, members) in enumerate(groups.items()):
        color = COLORS[gi % len(COLORS)]
        xs, mean, lo, hi = best_so_far([runs[i] for i in members])
        if not xs:
            continue
        _band(fig, go, xs, lo, hi, color, label, shape="hv")
        for i in members:
            rx, ry, _, _ = best_so_far([runs[i]])
            fig.add_trace(go.Scatter(x=rx, y=ry, mode="lines", line=dict(color=_rgba(color, 0.35), width=1, shape="hv"),
                                     legendgroup=label, showlegend=False,
                                     hovertemplate=f"{html.escape(label)} · seed {html.escape(str(runs[i].value('seed')))}<br>"
                                                   "%{x} calls · best %{y:.3f}<extra></extra>"))
        fig.add_trace(go.Scatter(x=xs, y=mean, mode="lines", name=f"{label} (n={len(members)})", legendgroup=label,
                                 line=dict(color=color, width=2.2, shape="hv"),
                                 hovertemplate=f"{html.escape(label)} mean · %{{x}} calls · best %{{y:.3f}}<extra></extra>"))
    if fig.data:
        figs.append(_fig_html(fig, "fig-best"))
    bar.advance()
    return figs


def _band(fig, go, xs, lo, hi, color: str, label: str, shape: str = "linear") -> None:
    fig.add_trace(go.Scatter(x=xs, y=lo, mode="lines", line=dict(width=0, shape=shape), legendgroup=label, showlegend=False,
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs, y=hi, mode="lines", line=dict(width=0, shape=shape), fill="tonexty",
                             fillcolor=_rgba(color, 0.15), legendgroup=label, showlegend=False, hoverinfo="skip"))


def _sweep_dev_figure(runs: list[Run], groups: dict[str, list[int]]):
    import plotly.graph_objects as go

    fig = _figure("policy dev accuracy at anchor checks", "step", "dev accuracy", height=340)
    shown = set()
    for gi, (label, members) in enumerate(groups.items()):
        color = COLORS[gi % len(COLORS)]
        checks: dict[int, list[float]] = {}
        marks = []
        for i in members:
            for row in runs[i].rows:
                if _number(row.get("policy_dev_acc")) and _number(row.get("step")):
                    checks.setdefault(int(row["step"]), []).append(float(row["policy_dev_acc"]))
                    if row.get("anchor") in DECISIONS:
                        marks.append((i, row))
        if not checks:
            continue
        steps = sorted(checks)
        fig.add_trace(go.Scatter(x=steps, y=[sum(checks[s]) / len(checks[s]) for s in steps], mode="lines", name=label,
                                 line=dict(color=color, width=2), legendgroup=label,
                                 hovertemplate=f"{html.escape(label)} mean · step %{{x}} · %{{y:.3f}}<extra></extra>"))
        for decision, (symbol, _, name) in DECISIONS.items():
            mine = [(i, r) for i, r in marks if r["anchor"] == decision]
            if not mine:
                continue
            fig.add_trace(go.Scatter(
                x=[int(r["step"]) for _, r in mine], y=[r["policy_dev_acc"] for _, r in mine], mode="markers",
                name=name, legendgroup=label, showlegend=False,
                marker=dict(symbol=symbol, size=9, color=color, line=dict(color="black", width=0.6)),
                customdata=[[i, int(r["step"])] for i, r in mine],
                text=[f"{html.escape(label)} · seed {html.escape(str(runs[i].value('seed')))}: {decision}" for i, _ in mine],
                hovertemplate="%{text}<br>step %{x} · policy %{y:.3f}<extra></extra>"))
            shown.add(decision)
    if not fig.data:
        return None
    for decision in DECISIONS:  # a legend of the decision markers, in black
        if decision in shown:
            symbol, _, name = DECISIONS[decision]
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                     marker=dict(symbol=symbol, size=9, color="white", line=dict(color="black", width=1))))
    return fig


def lineage_figure(run: Run, nodes: dict[str, dict], div_id: str) -> str:
    """Candidates as a tree: edges from the parent(s) each was proposed from, colour = reward,
    the final queue as stars (the dev-selected prompt larger)."""
    import plotly.graph_objects as go

    pos, primary = tree_layout(nodes)
    in_queue = {q["prompt"]: q for q in queue(run)}
    fig = _figure(f"lineage of {len(nodes)} candidates (x: step proposed; hover for the prompt)", "step", "",
                  height=max(300, min(900, 22 * len(pos) + 80)))
    fig.update_yaxes(showticklabels=False, showgrid=False, ticks="")
    ex, ey, sx, sy = [], [], [], []
    for k, n in nodes.items():
        further = [p for p in n["parents"] if p != primary[k] and p in pos]
        if len(n["parents"]) > 3:
            further = []  # OPRO shows many instructions at once: draw the first, count the rest in the tooltip
        if primary[k] is not None and k in pos:  # an elbow, as in a dendrogram: down from the parent, then across
            (px, py), (cx, cy) = pos[primary[k]], pos[k]
            ex += [px, px, cx, None]
            ey += [py, cy, cy, None]
        for p in further:
            sx += [pos[p][0], pos[k][0], None]
            sy += [pos[p][1], pos[k][1], None]
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="#888", width=1), hoverinfo="skip", showlegend=False))
    if sx:
        fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line=dict(color="#bbb", width=1, dash="dot"), hoverinfo="skip",
                                 name="further parents"))
    keys = [k for k in nodes if k in pos]
    rewards = [nodes[k]["reward"] for k in keys]
    known = [r for r in rewards if r is not None]

    def text(k):
        n = nodes[k]
        q = in_queue.get(n["prompt"])
        lines = [f"<b>{html.escape(str(k))[:40]}</b> · step {n['step']}"
                 + ("" if n["reward"] is None else f" · reward {n['reward']:.3f}")]
        if q:
            lines.append(f"final queue #{q['rank']}: dev {q.get('dev_accuracy', math.nan):.3f} test {q.get('test_accuracy', math.nan):.3f}"
                         + (" (selected)" if q["selected"] else ""))
        lines.append(_wrap(n["prompt"]))
        if len(n["parents"]) > 1:
            lines.append(f"proposed from {len(n['parents'])} candidates")
        return "<br>".join(lines)

    fig.add_trace(go.Scatter(
        x=[pos[k][0] for k in keys], y=[pos[k][1] for k in keys], mode="markers", showlegend=False,
        marker=dict(size=[16 if in_queue.get(nodes[k]["prompt"], {}).get("selected") else 12 if nodes[k]["prompt"] in in_queue else 8
                          for k in keys],
                    symbol=["star" if nodes[k]["prompt"] in in_queue else "circle" for k in keys],
                    color=[r if r is not None else (min(known) if known else 0) for r in rewards],
                    colorscale="Viridis", showscale=bool(known), colorbar=dict(title=dict(text="reward"), thickness=12),
                    line=dict(color="black", width=0.5)),
        text=[text(k) for k in keys], hovertemplate="%{text}<extra></extra>"))
    return _fig_html(fig, div_id)


def _wrap(text: str, width: int = 90, max_lines: int = 6) -> str:
    words, lines, cur = " ".join(text.split()).split(" "), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [lines[max_lines - 1][:width - 1] + "…"]
    return "<br>".join(html.escape(line) for line in lines) if text.strip() else "(empty)"


# --- tables --------------------------------------------------------------------------------------
def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def _num_cell(v, digits: int = 3, cls: str = "", title: str = "") -> str:
    if not _number(v):
        return '<td class="num" data-v=""></td>'
    attrs = (f' class="num {cls}"' if cls else ' class="num"') + (f' title="{_esc(title)}"' if title else "")
    return f'<td{attrs} data-v="{float(v)!r}">{float(v):.{digits}f}</td>'


def _prompt_cell(p: str) -> str:
    return f'<td class="prompt">{_esc(p)}</td>' if p.strip() else '<td class="prompt"><span class="empty">(empty)</span></td>'


def _table(tid: str, header: list[tuple[str, str]], body: list[str], search: bool = False, caption: str = "") -> str:
    """A sortable table (click a header); `search` adds a filter box (free text, and `step:N`
    `run:N` tokens) and pages of PAGE_ROWS rows."""
    ths = "".join(f'<th data-type="{t}">{_esc(h)}</th>' for h, t in header)
    tools = ""
    if search:
        tools = (f'<div class="tools"><input type="search" class="search" placeholder="search prompts (also step:12, run:3)" '
                 f'aria-label="search {tid}"> <span class="info"></span> <button type="button" class="more">show more</button></div>')
    cap = f'<p class="caption">{caption}</p>' if caption else ""
    return (f'<div class="table-wrap" data-page="{PAGE_ROWS if search else 0}">{cap}{tools}<table id="{tid}" class="sortable">'
            f"<thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _plain_table(tid: str, header: list[str], cells: list[list[str]]) -> str:
    """report.py's header and cells (already formatted) as a sortable HTML table."""
    body = ["<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in cells]
    return _table(tid, [(h, "text") for h in header], body)


def queue_table(runs: list[Run], indices: list[int], by: list[str] | None = None) -> str:
    """The final queues; with `by` (a sweep) each row names its run's group and seed."""
    header = ([("group", "text"), ("seed", "text")] if by else []) + [
        ("rank", "num"), ("prompt", "text"), ("train reward", "num"), ("dev acc", "num"), ("test acc", "num"), ("step", "num")]
    body = []
    for i in indices:
        first = _run_cells(runs[i], by)
        for q in queue(runs[i]):
            cls = "queue selected" if q["selected"] else "queue"
            mark = ' <span class="badge">dev-selected</span>' if q["selected"] else ""
            body.append(f'<tr class="{cls}" data-run="{i}" data-step="{_esc(q.get("step"))}">{first}'
                        f'<td class="num" data-v="{q["rank"]}">{q["rank"]}{mark}</td>{_prompt_cell(str(q.get("prompt", "")))}'
                        f'{_num_cell(q.get("train_reward"))}{_num_cell(q.get("dev_accuracy"))}{_num_cell(q.get("test_accuracy"))}'
                        f'{_num_cell(q.get("step"), 0)}</tr>')
    return _table("queue", header, body, caption="The final queue (results.json): each prompt's training reward when queued, "
                  "its dev and test accuracy; the dev-selected prompt is marked.") if body else ""


def prompts_table(runs: list[Run], indices: list[int], by: list[str] | None = None) -> tuple[str, list[str]]:
    """Every sampled prompt; the rows of final-queue prompts carry their dev and test accuracy.
    Returns the table and notes on what the runs do not log."""
    header = ([("group", "text"), ("seed", "text")] if by else []) + [
        ("step", "num"), ("prompt", "text"), ("reward", "num"), ("acc", "num"), ("words", "num")]
    rows_by_run = {i: sampled_prompts(runs[i]) for i in indices}
    any_tokens = any(p["tokens"] is not None for ps in rows_by_run.values() for p in ps)
    if any_tokens:
        header.append(("tokens", "num"))
    header += [("queue", "num"), ("dev acc", "num"), ("test acc", "num")]
    body, approx_runs, silent_runs = [], 0, []
    for i in indices:
        in_queue = {q.get("prompt"): q for q in queue(runs[i])}
        if not rows_by_run[i]:
            silent_runs.append(i)
        approx = False
        first = _run_cells(runs[i], by)
        for p in rows_by_run[i]:
            q = in_queue.get(p["prompt"])
            cls = ("queue selected" if q["selected"] else "queue") if q else ""
            if p["reward"] is None and p["step_reward"] is not None:
                approx = True
            reward = (_num_cell(p["reward"]) if p["reward"] is not None
                      else _num_cell(p["step_reward"], cls="approx", title="the step's mean: per-prompt rewards not logged"))
            acc = (_num_cell(p["acc"]) if p["acc"] is not None
                   else _num_cell(p["step_acc"], cls="approx", title="the step's mean: per-prompt accuracies not logged"))
            cells = [first, _num_cell(p["step"], 0), _prompt_cell(p["prompt"]), reward, acc, _num_cell(len(p["prompt"].split()), 0)]
            if any_tokens:
                cells.append(_num_cell(p["tokens"], 0))
            cells += ([f'<td class="num" data-v="{q["rank"]}">#{q["rank"]}</td>', _num_cell(q.get("dev_accuracy")),
                       _num_cell(q.get("test_accuracy"))] if q else ['<td class="num" data-v=""></td>'] * 3)
            body.append(f'<tr class="{cls}" data-run="{i}" data-step="{p["step"]}">{"".join(cells)}</tr>')
        approx_runs += approx
    notes = []
    if approx_runs:
        notes.append(("This run logs" if len(indices) == 1 else f"{approx_runs} of {len(indices)} runs log") + " no per-prompt reward or accuracy (metrics keys "
                     "<code>prompt_rewards</code>, <code>prompt_accs</code>): their rows show the step's mean, marked ≈.")
    if silent_runs:
        names = ", ".join(_esc(run_label(runs[i], by) if by else runs[i].path) for i in silent_runs[:5]) + (" …" if len(silent_runs) > 5 else "")
        notes.append(f"{len(silent_runs)} run(s) log no sampled prompts (no <code>prompts</code> in metrics.jsonl; GEPA runs older "
                     f"than its lineage logging have only iteration rows): {names}. Their final queue is above.")
    table = _table("prompts", header, body, search=True,
                   caption="Every sampled prompt with its step; rows of final-queue prompts are highlighted with their dev and "
                           "test accuracy. Click a header to sort.") if body else ""
    return table, notes


# --- labels --------------------------------------------------------------------------------------
def group_label(run: Run, by: list[str]) -> str:
    return " / ".join(run.key(by))


def run_label(run: Run, by: list[str]) -> str:
    return f"{group_label(run, by)} · seed {run.value('seed')}"


def _run_cells(run: Run, by: list[str] | None) -> str:
    return f"<td>{_esc(group_label(run, by))}</td><td>{_esc(run.value('seed'))}</td>" if by else ""


# --- pages ---------------------------------------------------------------------------------------
def write_html(runs: list[Run], by: list[str], out: Path, comparisons: list[Comparison] = (), smooth: int = 1) -> Path:
    """report.html under out: a run's page for one run, a sweep's page for several."""
    out.mkdir(parents=True, exist_ok=True)
    # the bar counts the figures: the curves, then each run's lineage tree (drawn where it logs one)
    with progress.bar("report: drawing report.html", total=FIGURES + len(runs)) as bar:
        page = run_page(runs[0], by, bar) if len(runs) == 1 else sweep_page(runs, by, list(comparisons), smooth, bar)
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


RESULT_FIELDS = [  # (results.json key, label, digits)
    ("test_accuracy", "test acc (dev-selected)", 3), ("dev_accuracy", "dev acc", 3), ("guard_test_accuracy", "guard acc", 3),
    ("paper_test_accuracy", "paper acc (max over queue)", 3), ("manual_test_accuracy", "manual prompt", 3),
    ("empty_test_accuracy", "empty prompt", 3), ("target_calls", "target calls", 0), ("n_test", "test examples", 0),
    ("wall_time_s", "wall time (min)", 1),
]


def run_page(run: Run, by: list[str], bar: progress.Bar | None = None) -> str:
    res = run.results or {}
    cfg = lambda *keys: next((str(v) for v in (run.value(k) for k in keys) if v is not None), "?")
    title = f"{cfg('task.name', 'task')} · {cfg('algo.name', 'algo')} · seed {cfg('seed')}"
    cards = []
    for key, label, digits in RESULT_FIELDS:
        v = res.get(key)
        if _number(v):
            v = v / 60 if key == "wall_time_s" else v
            cards.append(f'<div class="card"><div class="v">{v:.{digits}f}</div><div class="k">{_esc(label)}</div></div>')
    meta = " · ".join(f"{k} <b>{_esc(v)}</b>" for k, v in (("agent", run.value("agent.name") or res.get("agent")),
                                                           ("target", run.value("target.name") or res.get("target")))
                      if v is not None)
    chosen = res.get("prompt")
    chosen_html = (f'<div class="chosen"><div class="k">dev-selected prompt</div><div class="prompt">{_esc(chosen) or "(empty)"}</div></div>'
                   if isinstance(chosen, str) else "")
    if res.get("kept_baseline"):
        chosen_html += f'<p class="note">The guard kept the {_esc(res["kept_baseline"])} prompt (algo.keep_baseline).</p>'
    if run.results is None:
        chosen_html += '<p class="note">This run failed (failed.json) or has no results.json.</p>'
    bar = bar or progress.Bar()
    figs = run_figures(run, 0, bar)
    nodes = lineage(run)
    prompts_html, notes = prompts_table([run], [0])
    sections = [
        f'<header><h1>{_esc(title)}</h1><p class="path">{_esc(run.path)}</p><p>{meta}</p></header>',
        f'<section class="cards">{"".join(cards)}</section>{chosen_html}',
        _curves_section(figs, single_run=True, anchors=any(r.get("anchor") in ("update", "rollback") for r in run.rows)),
        _section("Final queue", queue_table([run], [0]) or '<p class="note">No queue in results.json.</p>'),
    ]
    if nodes:
        sections.append(_section("Lineage", lineage_figure(run, nodes, "fig-lineage")))
    bar.advance()
    if not nodes and _lineage_expected(run):
        notes.append("No lineage in this run's metrics: the tree needs <code>prompt_parents</code> (and, for GEPA, "
                     "<code>prompt_ids</code>) beside <code>prompts</code>.")
    sections.append(_section("Sampled prompts", prompts_html or '<p class="note">No sampled prompts in metrics.jsonl.</p>', notes))
    return _page(title, sections, [run_label(run, by)])


def _lineage_expected(run: Run) -> bool:
    return str(run.value("algo.name")) in ("opro", "gepa")


def sweep_page(runs: list[Run], by: list[str], comparisons: list[Comparison], smooth: int, bar: progress.Bar | None = None) -> str:
    bar = bar or progress.Bar()
    table = summarize(runs, by)
    header, cells = table_cells(table, by)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        if searched(r):
            groups.setdefault(group_label(r, by), []).append(i)
    asked = {c.title for c in comparisons}
    auto = []
    for baseline in BASELINES:  # does each group's prompt beat the manual / empty prompt of its own runs?
        rows = compare_to_baseline(runs, by, baseline)
        title = f"paired by run: dev-selected prompt - {baseline} prompt, test accuracy (two-sided p-values)"
        if rows and title not in asked:
            auto.append(Comparison(rows, by, title))
    comp_html = "".join(f"<h3>{_esc(c.title)}</h3>" + _plain_table(f"compare-{n}", *compare_cells(c.rows, c.keys))
                        for n, c in enumerate(comparisons + auto))
    order = sorted(range(len(runs)), key=lambda i: (runs[i].key(by), str(runs[i].value("seed"))))
    run_rows = []
    for i in order:
        r, res = runs[i], runs[i].results or {}
        status = "failed" if r.results is None else "done"
        run_rows.append(f'<tr data-run="{i}"><td>{_esc(group_label(r, by))}</td><td>{_esc(r.value("seed"))}</td><td>{status}</td>'
                        f'{_num_cell(res.get("test_accuracy"))}{_num_cell(res.get("dev_accuracy"))}'
                        f'{_num_cell(res.get("paper_test_accuracy"))}{_num_cell(res.get("target_calls"), 0)}'
                        f'{_prompt_cell(str(res.get("prompt") or "")) if "prompt" in res else "<td></td>"}'
                        f'<td class="path">{_esc(r.path)}</td></tr>')
    runs_html = _table("runs", [("group", "text"), ("seed", "text"), ("status", "text"), ("test acc", "num"), ("dev acc", "num"),
                                ("paper acc", "num"), ("calls", "num"), ("dev-selected prompt", "text"), ("directory", "text")], run_rows)
    prompts_html, notes = prompts_table(runs, order, by)
    lineages = []
    for i in order:
        nodes = lineage(runs[i])
        if nodes:
            lineages.append(f"<details><summary>{_esc(run_label(runs[i], by))}: {len(nodes)} candidates</summary>"
                            f"{lineage_figure(runs[i], nodes, f'fig-lineage-{i}')}</details>")
        bar.advance()
    title = f"{len(runs)} runs by {', '.join(by)}"
    sections = [
        f'<header><h1>Sweep: {_esc(title)}</h1><p class="path">{_esc(_common_dir(runs))}</p></header>',
        _section("Summary", _plain_table("summary", header, cells),
                 ["Mean [95% Student-t interval] over each group's runs, as in report.md; no interval with one run."]),
    ]
    if comp_html:
        sections.append(_section("Paired comparisons", comp_html,
                                 ["As compare.md / vs_&lt;baseline&gt;.md: mean difference with its 95% t-interval, "
                                  "wins/ties/losses and two-sided p-values."]))
    sections += [
        _curves_section(sweep_figures(runs, groups, smooth, bar), single_run=False, smooth=smooth),
        _section("Runs", runs_html),
        _section("Final queues", queue_table(runs, order, by) or '<p class="note">No queues in results.json.</p>'),
    ]
    if lineages:
        sections.append(_section("Lineage", "".join(lineages)))
    sections.append(_section("Sampled prompts", prompts_html or '<p class="note">No sampled prompts in the runs\' metrics.</p>', notes))
    return _page(f"Sweep: {title}", sections, [run_label(r, by) for r in runs])


def _common_dir(runs: list[Run]) -> str:
    import os

    try:
        return os.path.commonpath([str(r.path) for r in runs])
    except ValueError:
        return ""


def _section(title: str, body: str, notes: list[str] = ()) -> str:
    note_html = "".join(f'<p class="note">{n}</p>' for n in notes)
    return f"<section><h2>{_esc(title)}</h2>{note_html}{body}</section>"


def _curves_section(figs: list[str], single_run: bool, smooth: int = 1, anchors: bool = False) -> str:
    if not figs:
        return _section("Curves", '<p class="note">No per-step rows in metrics.jsonl: nothing to draw.</p>')
    if single_run:
        hint = "Hover a point to see that step's prompts here; click it to filter the prompts table to that step."
        notes = [("Dashed lines on the reward: anchor updates (green) and rollbacks (red). " if anchors else "")
                 + "Best reward so far: the running maximum of the queue's best."]
    else:
        hint = "Hover a seed's faint line to see that step's prompts here; click it to filter the prompts table."
        notes = ["Bold: each group's mean over its runs; band: min..max over the runs; faint: each run"
                 + (f"; per-step curves as each run's trailing mean over {smooth} steps (--smooth)" if smooth > 1 else "") + ". "
                 "Anchor checks: markers are each run's decision. Best reward so far: each run's running maximum, held "
                 "at its best until the last run of its group ends, so the mean never falls."]
    panel = f'<aside id="step-panel"><h3>Prompts at a step</h3><div class="body"><p class="note">{hint}</p></div></aside>'
    # the panel comes first in the page so that the figures, drawn as the page is read, get their final width
    return _section("Curves", f'<div class="curves">{panel}<div class="figs">{"".join(figs)}</div></div>', notes)


def _page(title: str, sections: list[str], labels: list[str]) -> str:
    from plotly.offline import get_plotlyjs

    data = json.dumps({"runs": labels}).replace("<", "\\u003c")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f"<title>{_esc(title)} · promptrl report</title><style>{CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>{''.join(sections)}"
            f'<footer>promptrl report --html · plotly.js inlined, no network needed</footer>'
            f'<script type="application/json" id="report-data">{data}</script><script>{JS}</script></body></html>\n')


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:12px 20px 40px;max-width:1500px;color:#222}
h1{font-size:20px;margin:4px 0}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:14px;margin:12px 0 6px}.path{color:#777;font-size:12px;margin:2px 0;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0}.card{border:1px solid #ddd;border-radius:6px;padding:6px 12px;min-width:110px}
.card .v{font-size:18px;font-weight:600}.card .k,.chosen .k{font-size:11px;color:#666;text-transform:uppercase;letter-spacing:.03em}
.chosen{border-left:4px solid #2ca02c;background:#f3faf3;padding:6px 12px;margin:8px 0}
.chosen .prompt{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px}
.note{color:#555;font-size:12.5px;margin:4px 0}.caption{color:#555;font-size:12.5px;margin:2px 0 6px}
.curves{display:flex;gap:14px;align-items:flex-start}.figs{flex:1;display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:6px;min-width:0}
.fig{border:1px solid #eee;border-radius:4px;min-width:0}
#step-panel{order:2;width:330px;flex:none;position:sticky;top:8px;max-height:95vh;overflow:auto;border:1px solid #ddd;border-radius:6px;padding:6px 10px;background:#fcfcfc}
#step-panel h3{margin:2px 0 6px}#step-panel .p{border-top:1px solid #eee;padding:4px 0;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
#step-panel .p.queue{background:#fff6d5}#step-panel .m{color:#666;font-family:system-ui,sans-serif;font-size:11px}
.table-wrap{overflow-x:auto;margin:6px 0 14px}.tools{margin:4px 0}.tools input{width:340px;padding:3px 6px}
.tools .info{color:#666;font-size:12px;margin:0 8px}
table{border-collapse:collapse;font-size:12.5px;width:100%}th,td{border-bottom:1px solid #eee;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f5f5f5;position:sticky;top:0;cursor:pointer;user-select:none;white-space:nowrap}
th.asc::after{content:" ▲";font-size:10px}th.desc::after{content:" ▼";font-size:10px}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.approx{color:#888}td.approx::before{content:"≈ "}
td.prompt{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;max-width:720px;min-width:260px}
td.path{font-size:11px;color:#777;word-break:break-all}.empty{color:#999;font-style:italic}
tr.queue{background:#fff6d5}tr.selected{background:#e3f4e3}.badge{background:#2ca02c;color:#fff;border-radius:3px;padding:0 4px;font-size:10px;margin-left:4px}
details{margin:6px 0}summary{cursor:pointer}code{background:#f3f3f3;padding:0 3px;border-radius:3px}
footer{margin-top:30px;color:#999;font-size:11px}
@media (max-width:900px){.curves{flex-direction:column}#step-panel{width:auto;position:static}}
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  function text(el) { return el.textContent; }
  // --- tables: sort on a header click; search and pages where there is a search box ---
  var tables = {};
  document.querySelectorAll(".table-wrap").forEach(function (wrap) {
    var table = wrap.querySelector("table"), tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.forEach(function (r) { r._t = r.textContent.toLowerCase(); });
    var input = wrap.querySelector("input.search"), info = wrap.querySelector(".info"), more = wrap.querySelector("button.more");
    var page = +wrap.dataset.page || 0, limit = page, timer = null;
    function apply() {
      var words = input ? input.value.toLowerCase().trim().split(/\s+/).filter(Boolean) : [];
      var matched = rows.filter(function (r) {
        return words.every(function (w) {
          var m = /^(step|run):(\S+)$/.exec(w);
          return m ? r.dataset[m[1]] === m[2] : r._t.indexOf(w) >= 0;
        });
      });
      var shown = 0, set = new Set(matched);
      rows.forEach(function (r) {
        var on = set.has(r) && (!page || shown < limit);
        if (on) shown++;
        r.style.display = on ? "" : "none";
      });
      if (info) info.textContent = shown + " of " + matched.length + " shown (" + rows.length + " in all)";
      if (more) more.style.display = page && shown < matched.length ? "" : "none";
    }
    if (input) input.addEventListener("input", function () { clearTimeout(timer); limit = page; timer = setTimeout(apply, 120); });
    if (more) more.addEventListener("click", function () { limit += page * 3; apply(); });
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("asc"), num = th.dataset.type === "num";
        table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        function key(r) {
          var c = r.cells[col]; if (!c) return num ? NaN : "";
          return num ? (c.dataset.v === "" || c.dataset.v === undefined ? NaN : parseFloat(c.dataset.v)) : text(c).toLowerCase();
        }
        var keyed = rows.map(function (r, i) { return [key(r), i, r]; });
        keyed.sort(function (a, b) {
          var x = a[0], y = b[0];
          if (num) {
            if (isNaN(x) && isNaN(y)) return a[1] - b[1];
            if (isNaN(x)) return 1; if (isNaN(y)) return -1;   // blanks last either way
          }
          var d = x < y ? -1 : x > y ? 1 : 0;
          return (asc ? d : -d) || a[1] - b[1];
        });
        rows = keyed.map(function (k) { return k[2]; });
        var frag = document.createDocumentFragment();
        rows.forEach(function (r) { frag.appendChild(r); });
        tbody.appendChild(frag);
        apply();
      });
    });
    tables[table.id] = {apply: apply, input: input};
    apply();
  });
  // --- the prompts panel: a hovered point's [run, step] -> that step's rows of the prompts table ---
  var byStep = {}, prompts = document.getElementById("prompts");
  if (prompts) prompts.querySelectorAll("tbody tr").forEach(function (r) {
    var k = r.dataset.run + "|" + r.dataset.step; (byStep[k] = byStep[k] || []).push(r);
  });
  var panel = document.querySelector("#step-panel .body");
  var col = {};
  if (prompts) Array.prototype.forEach.call(prompts.tHead.rows[0].cells, function (th, i) { col[text(th)] = i; });
  function cellText(r, name) {
    var c = r.cells[col[name]];
    if (!c) return "";
    return (c.classList.contains("approx") ? "\u2248 step mean " : "") + text(c);
  }
  function show(run, step) {
    if (!panel) return;
    var rows = byStep[run + "|" + step] || [];
    var label = data.runs[run] || "";
    var html = document.createElement("div");
    var h = document.createElement("div"); h.className = "m";
    h.textContent = (data.runs.length > 1 ? label + " · " : "") + "step " + step + " · " + rows.length + " prompt(s)";
    html.appendChild(h);
    if (!rows.length) { var e = document.createElement("p"); e.className = "note"; e.textContent = "no prompts logged at this step"; html.appendChild(e); }
    rows.forEach(function (r) {
      var d = document.createElement("div"); d.className = "p" + (r.classList.contains("queue") ? " queue" : "");
      var t = r.querySelector("td.prompt"); d.textContent = t ? t.textContent : "";
      var m = document.createElement("div"); m.className = "m";
      var q = cellText(r, "queue");
      m.textContent = "reward " + cellText(r, "reward") + " · acc " + cellText(r, "acc") + (q ? " · final queue " + q : "");
      d.appendChild(m); html.appendChild(d);
    });
    panel.replaceChildren(html);
  }
  var graphs = document.querySelectorAll(".plotly-graph-div");
  function fit() { graphs.forEach(function (gd) { if (gd.data && window.Plotly) Plotly.Plots.resize(gd); }); }
  window.addEventListener("load", fit);
  document.querySelectorAll("details").forEach(function (d) { d.addEventListener("toggle", fit); });
  graphs.forEach(function (gd) {
    if (!gd.on) return;
    gd.on("plotly_hover", function (ev) {
      var p = ev.points && ev.points[0];
      if (p && p.customdata && p.customdata.length === 2) show(p.customdata[0], p.customdata[1]);
    });
    gd.on("plotly_click", function (ev) {
      var p = ev.points && ev.points[0], t = tables.prompts;
      if (!p || !p.customdata || !t || !t.input) return;
      t.input.value = (data.runs.length > 1 ? "run:" + p.customdata[0] + " " : "") + "step:" + p.customdata[1];
      t.apply();
      t.input.scrollIntoView({block: "center"});
    });
  });
})();
"""


# --- wandb -----------------------------------------------------------------------------------------
PROMPT_COLUMNS = ["step", "prompt", "reward", "accuracy", "length", "tokens", "per_prompt", "queue_rank"]
QUEUE_COLUMNS = ["rank", "prompt", "train_reward", "dev_accuracy", "test_accuracy", "step", "selected"]


def log_to_wandb(run_dir: Path | str, wandb_run, by: list[str] | None = None) -> dict:
    """Log a finished run's prompts to a live wandb run: a `prompts` table (every sampled prompt:
    step, prompt, reward, accuracy, length in words, agent tokens where logged, `per_prompt` False
    where reward and accuracy are the step's means because the run logs no per-prompt values,
    and its rank in the final queue), a `queue` table (the final queue: rank, prompt, training
    reward, dev and test accuracy, step, dev-selected), and the run's report.html (written to
    <run_dir>/report/report.html) as an artifact of type `report`.

    To be called from promptrl/train.py at the end of a run, once results.json is written and
    before the tracker closes wandb (Tracker.close -> wandb.finish):
    `if tracker.wandb is not None: report_html.log_to_wandb(run_dir, tracker.wandb)`.
    Returns {"prompts": rows, "queue": rows, "artifact": name}."""
    import wandb

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    path = write_html([run], by or ["task.name", "algo.name"], run_dir / "report")
    ranks = {q.get("prompt"): q["rank"] for q in queue(run)}
    prompt_rows = []
    for p in sampled_prompts(run):
        own = p["reward"] is not None
        prompt_rows.append([p["step"], p["prompt"], p["reward"] if own else p["step_reward"], p["acc"] if own else p["step_acc"],
                            len(p["prompt"].split()), p["tokens"], own, ranks.get(p["prompt"])])
    queue_rows = [[q["rank"], q.get("prompt"), _float(q.get("train_reward")), _float(q.get("dev_accuracy")),
                   _float(q.get("test_accuracy")), q.get("step"), q["selected"]] for q in queue(run)]
    wandb_run.log({"prompts": wandb.Table(columns=PROMPT_COLUMNS, data=prompt_rows),
                   "queue": wandb.Table(columns=QUEUE_COLUMNS, data=queue_rows)})
    name = "report-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in str(wandb_run.id))
    artifact = wandb.Artifact(name, type="report", description=f"promptrl report.html of {run_dir}")
    artifact.add_file(str(path), name="report.html")
    wandb_run.log_artifact(artifact)
    return {"prompts": prompt_rows, "queue": queue_rows, "artifact": name}
