"""`promptrl report --html`: the self-contained page of a run or a sweep, opened in headless
Chromium with networking off, and the prompts logged to wandb (offline, read back from the run's
own files). The runs are real ones committed under outputs/ (no model is loaded)."""

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from promptrl.report import load_run
from promptrl.report_html import lineage, log_to_wandb, queue, sampled_prompts, tree_layout, write_html

from conftest import run_cli
from headless_chromium import Browser, find_browser

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "outputs" / "study_sst2" / "runs"
GEPA = REPO / "outputs" / "compare_sst2" / "gepa_runs"
RUN_FILES = ("results.json", "metrics.jsonl", "config_resolved.yaml", ".hydra/overrides.yaml")
HOSTILE = "</script><script>window.pwned = 1</script><b>not bold</b> & <i>"


def copy_run(src: Path, dst: Path) -> Path:
    for name in RUN_FILES:
        if (src / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / name, dst / name)
    return dst


def study_run(arm: str, seed: int) -> Path:
    return STUDY / f"+arm={arm},experiment=study_sst2,seed={seed}"


@pytest.fixture
def sweep(tmp_path):
    """A small real sweep: APPO and APE (2 seeds each) from the seeded study, one GEPA run."""
    d = tmp_path / "sweep"
    for arm in ("appo", "ape"):
        for seed in (0, 1):
            copy_run(study_run(arm, seed), d / f"{arm}_{seed}")
    copy_run(GEPA / "0", d / "gepa_0")
    return d


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def write_rows(run_dir: Path, metrics: list[dict]) -> None:
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))


needs_chromium = pytest.mark.skipif(
    find_browser() is None and not os.environ.get("PROMPTRL_REQUIRE_CHROMIUM"),
    reason="no chromium (apt-get install chromium); CI sets PROMPTRL_REQUIRE_CHROMIUM=1 so that this fails instead",
)


def assert_offline_and_clean(browser: Browser, page: Path) -> None:
    """The page itself was the one thing loaded (data: URIs are inline bytes, no network: plotly.js
    6.0 probes WebP support with one), and nothing went to the console as an error or warning."""
    requests = browser.requests()
    assert requests[0] == page.as_uri()
    assert [u for u in requests[1:] if not u.startswith("data:")] == [], "the page asked for something besides itself"
    assert browser.errors() == []


def assert_not_blank(png: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]
    assert image.shape[0] >= 800 and image.shape[1] >= 1200
    inked = (image < 0.9).any(axis=-1).mean()  # share of pixels that are not (near) white
    colored = (image.max(axis=-1) - image.min(axis=-1) > 0.25).mean()  # curves, bands, highlighted rows
    assert inked > 0.03 and colored > 0.005, (inked, colored)


PLOTS_DRAWN = ("document.querySelectorAll('.plotly-graph-div').length > 0 && Array.from("
               "document.querySelectorAll('.plotly-graph-div')).every(g => g._fullLayout && g.querySelector('.main-svg'))")


def hover(browser: Browser, fig_id: str, trace: int, point: int) -> None:
    """A real mouse move onto a point of a trace (plotly emits no hover event for Fx.hover)."""
    x, y = browser.evaluate(f"""(function () {{
        var gd = document.getElementById({json.dumps(fig_id)}); gd.scrollIntoView({{block: "center"}});
        var t = gd.data[{trace}], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
        return [r.left + xa._offset + xa.d2p(t.x[{point}]), r.top + ya._offset + ya.d2p(t.y[{point}])];
    }})()""")
    browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    browser.pump(0.4)


@needs_chromium
def test_sweep_page_opens_offline_with_every_queue_prompt_and_draws(sweep, tmp_path):
    r = run_cli("report", str(sweep), "--html", "--compare", "algo.name=appo,ape", "--no-plots")
    assert r.returncode == 0, r.stderr
    page = sweep / "report" / "report.html"
    assert str(page) in r.stdout
    runs = [load_run(p) for p in sorted(sweep.iterdir()) if (p / "results.json").is_file()]  # find_runs' order
    with Browser(1280, 900) as b:
        b.open(page.as_uri(), ready=PLOTS_DRAWN)
        assert_offline_and_clean(b, page)
        b.evaluate("document.querySelector('.curves').scrollIntoView()")
        shot = b.screenshot(tmp_path / "sweep.png")  # the curves
        # every prompt of every run's final queue, exactly as results.json has it
        shown = b.evaluate("Array.from(document.querySelectorAll('#queue td.prompt')).map(td => td.textContent)")
        expected = [q["prompt"] or "(empty)" for run in runs for q in run.results["queue"]]
        assert sorted(shown) == sorted(expected) and len(expected) == 4 * 5 + 3  # GEPA's queue held 3
        # all sampled prompts are in the table (the GEPA run logs none), a page of them shown
        total = sum(len(sampled_prompts(run)) for run in runs)
        assert total == 4 * 800 and b.evaluate("document.querySelectorAll('#prompts tbody tr').length") == total
        assert b.evaluate("document.querySelector('#prompts').closest('.table-wrap').querySelector('.info').textContent") \
            == f"300 of {total} shown ({total} in all)"
        # the tables of report.md and compare.md, from report.py's own numbers
        summary = b.evaluate("document.getElementById('summary').innerText")
        for line in (sweep / "report" / "report.md").read_text().splitlines()[2:]:
            assert line.split(" | ")[0].strip("| ") in summary and line.split(" | ")[4] in summary
        compare = b.evaluate("document.getElementById('compare-0').innerText")
        md = (sweep / "report" / "compare.md").read_text()
        assert all(cell.strip() in compare for line in md.splitlines()[4:] for cell in line.strip("|").split("|")[1:6])
        assert b.evaluate("!!document.getElementById('compare-1')")  # vs the manual prompt, added for a sweep
        # curves: a group per arm, with bands; the best-so-far curve of each arm never falls
        assert b.evaluate("document.getElementById('fig-reward').data.filter(t => t.name && t.name.indexOf('(n=2)') > 0).length") == 2
        best = b.evaluate("document.getElementById('fig-best').data.filter(t => t.name && t.name.indexOf('(n=') > 0).map(t => t.y)")
        assert len(best) == 3 and all(all(b2 >= a2 for a2, b2 in zip(y, y[1:])) for y in best)
        # hovering a seed's faint line shows that run's prompts at that step
        trace = b.evaluate("document.getElementById('fig-reward').data.findIndex(t => t.customdata && t.customdata.length > 30)")
        run_index, step = b.evaluate(f"document.getElementById('fig-reward').data[{trace}].customdata[30]")
        hover(b, "fig-reward", trace, 30)
        panel = b.evaluate("document.querySelector('#step-panel .body').innerText")
        label = b.evaluate(f"JSON.parse(document.getElementById('report-data').textContent).runs[{run_index}]")
        at_step = [p["prompt"] for p in sampled_prompts(runs[run_index]) if p["step"] == step]
        assert label.endswith(f"seed {runs[run_index].value('seed')}") and f"{label} · step {step}" in panel and len(at_step) == 4
        assert all(" ".join(p.split())[:40] in " ".join(panel.split()) for p in at_step)
        assert_offline_and_clean(b, page)  # still nothing fetched after the hover
    assert_not_blank(shot)


@needs_chromium
def test_run_page_hover_search_sort_and_a_hostile_prompt(tmp_path):
    """One real APPO run, with a prompt that tries to close the script and inject markup."""
    run_dir = copy_run(study_run("appo", 0), tmp_path / "appo")
    metrics = rows(run_dir)
    metrics[5]["prompts"][0] = HOSTILE
    write_rows(run_dir, metrics)
    results = json.loads((run_dir / "results.json").read_text())
    results["queue"][2]["prompt"] = HOSTILE
    (run_dir / "results.json").write_text(json.dumps(results))
    r = run_cli("report", str(run_dir), "--html", "--no-plots")
    assert r.returncode == 0, r.stderr
    page = run_dir / "report" / "report.html"
    with Browser(1280, 900) as b:
        b.open(page.as_uri(), ready=PLOTS_DRAWN)
        assert_offline_and_clean(b, page)
        shot = b.screenshot(tmp_path / "run.png")  # the top: results, the dev-selected prompt, the first curves
        assert b.evaluate("typeof window.pwned") == "undefined"
        assert b.evaluate("Array.from(document.querySelectorAll('#queue td.prompt')).map(td => td.textContent)") == \
            [q["prompt"] for q in results["queue"]]
        figures = b.evaluate("Array.from(document.querySelectorAll('.plotly-graph-div')).map(g => g.id)")
        assert figures == ["fig-reward", "fig-acc", "fig-kl", "fig-entropy", "fig-response_len", "fig-dev", "fig-best"]
        # anchor checks: one marker per decision, at the logged steps
        decisions = {d: [a["step"] for a in results["anchor_decisions"] if a["anchor"] == d] for d in ("update", "keep", "rollback")}
        drawn = b.evaluate("Object.fromEntries(document.getElementById('fig-dev').data.filter(t => t.mode === 'markers')"
                           ".map(t => [t.name, t.x]))")
        assert drawn == {"anchor update": decisions["update"], "keep": decisions["keep"], "rollback": decisions["rollback"]}
        # the hover tooltip and the panel: the step's prompts; the hostile one shown as text
        hover(b, "fig-reward", 0, 5)
        tooltip = b.evaluate("document.querySelector('#fig-reward .hoverlayer').textContent")
        panel = b.evaluate("document.querySelector('#step-panel .body').innerText")
        assert "step 5" in tooltip and "</script><script>window.pwned" in tooltip
        assert HOSTILE in panel and "step 5 · 4 prompt(s)" in panel and "≈ step mean" in panel
        for p in metrics[5]["prompts"][1:]:
            assert " ".join(p.split())[:30] in " ".join(panel.split())
        # a click filters the table to the step; the search box finds text; a header click sorts
        b.evaluate("document.getElementById('fig-reward').emit('plotly_click', {points: [{customdata: [0, 7]}]})")
        b.pump(0.3)
        visible = "Array.from(document.querySelectorAll('#prompts tbody tr')).filter(r => r.style.display !== 'none')"
        assert b.evaluate(f"{visible}.map(r => r.dataset.step)") == ["7"] * 4
        b.evaluate("var i = document.querySelector('input.search'); i.value = 'window.pwned'; i.dispatchEvent(new Event('input'))")
        b.pump(0.5)
        assert b.evaluate(f"{visible}.map(r => r.querySelector('td.prompt').textContent)") == [HOSTILE]
        b.evaluate("var i = document.querySelector('input.search'); i.value = ''; i.dispatchEvent(new Event('input'))")
        b.pump(0.5)
        b.evaluate("Array.from(document.querySelectorAll('#prompts th')).find(th => th.textContent === 'test acc').click()")
        b.evaluate("Array.from(document.querySelectorAll('#prompts th')).find(th => th.textContent === 'test acc').click()")
        top = b.evaluate(f"{visible}.slice(0, 2).map(r => [r.className, r.cells[r.cells.length - 1].textContent])")
        best_test = max(q["test_accuracy"] for q in results["queue"])
        assert top[0] == ["queue selected", f"{best_test:.3f}"] and top[1][0].startswith("queue")
        assert_offline_and_clean(b, page)
    assert_not_blank(shot)


def test_per_prompt_values_are_used_when_logged_and_the_step_mean_marked_otherwise(tmp_path):
    run_dir = copy_run(study_run("appo", 0), tmp_path / "appo")
    metrics = rows(run_dir)
    metrics[0].update(prompt_rewards=[1.25, 2.5, None, 4.75], prompt_accs=[0.5, 0.625, None, 0.875], prompt_lens=[3, 4, 5, 6])
    write_rows(run_dir, metrics)
    prompts = sampled_prompts(load_run(run_dir))
    assert [p["reward"] for p in prompts[:5]] == [1.25, 2.5, None, 4.75, None]
    assert [p["tokens"] for p in prompts[:4]] == [3, 4, 5, 6] and prompts[2]["step_reward"] == metrics[0]["reward_mean"]
    page = write_html([load_run(run_dir)], ["task.name", "algo.name"], tmp_path / "out").read_text()
    body = page.split('id="prompts"', 1)[1]
    first_rows = body.split("<tr")[2:6]  # after the header row
    assert 'data-v="1.25">1.250</td>' in first_rows[0] and "approx" not in first_rows[0].split("prompt")[-1].split("data-v")[1]
    assert 'class="num approx"' in first_rows[2]  # the unscored one falls back to the step's mean, marked
    assert "<th data-type=\"num\">tokens</th>" in page
    assert "no per-prompt reward" in page  # the other 199 steps log none


def test_lineage_of_gepa_ids_and_opro_texts_draws_a_tree(tmp_path):
    run_dir = copy_run(GEPA / "0", tmp_path / "gepa")
    metrics = rows(run_dir)
    queue_prompts = [q["prompt"] for q in json.loads((run_dir / "results.json").read_text())["queue"]]
    # GEPA: candidate 0 the seed; 1 and 2 from 0; 3 merged from 1 and 2; 4 from a candidate never logged (9)
    lineage_rows = {0: ("seed", 0, []), 1: (queue_prompts[0], 1, [0]), 2: ("two", 2, [0]), 4: ("three", 3, [1, 2]), 6: ("four", 4, [9])}
    for step, (text, cid, parents) in lineage_rows.items():
        metrics[step].update(prompts=[text], prompt_ids=[cid], prompt_parents=[parents], prompt_rewards=[5.0 + cid])
    write_rows(run_dir, metrics)
    nodes = lineage(load_run(run_dir))
    assert set(nodes) == {"0", "1", "2", "3", "4", "9"} and nodes["3"]["parents"] == ["1", "2"]
    assert nodes["9"]["prompt"] == "(candidate 9: not logged)" and nodes["1"]["prompt"] == queue_prompts[0]
    pos, primary = tree_layout(nodes)
    assert set(pos) == set(nodes) and primary == {"0": None, "1": "0", "2": "0", "3": "1", "4": "9", "9": None}
    assert pos["0"][1] == (pos["1"][1] + pos["2"][1]) / 2 and pos["3"][0] == 4.0  # x: the step it was proposed at
    page = write_html([load_run(run_dir)], ["task.name", "algo.name"], tmp_path / "out").read_text()
    assert 'id="fig-lineage"' in page and "lineage of 6 candidates" in page
    # OPRO: parents named by their text (no ids), many at once; a loop in bad data does not hang
    opro = {"0": {"prompt": "a", "step": 0, "reward": 1.0, "parents": []}}
    opro.update({t: {"prompt": t, "step": 1, "reward": 2.0, "parents": ["a", "x", "y", "z"]} for t in ("b", "c")})
    opro.update({"x": {"prompt": "x", "step": 2, "reward": None, "parents": ["y"]}, "y": {"prompt": "y", "step": 2, "reward": None, "parents": ["x"]}})
    pos, primary = tree_layout(opro)
    assert set(pos) == set(opro) and primary["b"] == "x"  # "a" is no id here: the first parent that is one
    assert primary["x"] is None and primary["y"] is None  # the loop is cut: both become roots


def test_a_run_without_lineage_says_which_keys_draw_it(tmp_path):
    run_dir = copy_run(GEPA / "0", tmp_path / "gepa")
    page = write_html([load_run(run_dir)], ["task.name", "algo.name"], tmp_path / "out").read_text()
    assert 'id="fig-lineage"' not in page and "<code>prompt_parents</code>" in page
    assert "log no sampled prompts" in page and 'id="queue"' in page  # GEPA logs no prompts; its queue is still shown
    results = json.loads((run_dir / "results.json").read_text())
    marked = queue(load_run(run_dir))
    assert [q["rank"] for q in marked] == [1, 2, 3] and [q["prompt"] for q in marked] == [q["prompt"] for q in results["queue"]]
    assert [q["prompt"] for q in marked if q["selected"]] == [results["prompt"]]


def test_prompts_and_queue_reach_wandb_offline_with_the_page_as_artifact(tmp_path, monkeypatch):
    import wandb

    from wandb_offline import artifacts, offline_run, table

    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(tmp_path / sub))  # staging files stay out of ~/.local
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = copy_run(study_run("ape", 0), tmp_path / "ape")
    metrics = rows(run_dir)
    metrics[0].update(prompt_rewards=[6.5, 7.0, 7.5, 8.0], prompt_accs=[0.5, 0.625, 0.75, 0.875])
    write_rows(run_dir, metrics)
    run = wandb.init(mode="offline", dir=str(tmp_path), project="promptrl-test")
    logged = log_to_wandb(run_dir, run)
    run.finish()
    offline = offline_run(tmp_path / "wandb")
    prompts = table(offline, "prompts")
    assert prompts["columns"] == ["step", "prompt", "reward", "accuracy", "length", "tokens", "per_prompt", "queue_rank"]
    expected = [(r["step"], p) for r in metrics if "prompts" in r for p in r["prompts"]]
    assert [(row[0], row[1]) for row in prompts["data"]] == expected and len(expected) == 800
    assert [row[2:4] + [row[6]] for row in prompts["data"][:4]] == [[6.5, 0.5, True], [7.0, 0.625, True], [7.5, 0.75, True], [8.0, 0.875, True]]
    step1 = prompts["data"][4]  # no per-prompt values logged: the step's means, flagged
    assert step1[2] == pytest.approx(metrics[1]["reward_mean"]) and step1[3] == pytest.approx(metrics[1]["acc_mean"]) and step1[6] is False
    assert step1[4] == len(metrics[1]["prompts"][0].split())
    results = json.loads((run_dir / "results.json").read_text())
    queued = table(offline, "queue")
    assert queued["columns"] == ["rank", "prompt", "train_reward", "dev_accuracy", "test_accuracy", "step", "selected"]
    assert [(row[1], row[3], row[4]) for row in queued["data"]] == [(q["prompt"], q["dev_accuracy"], q["test_accuracy"])
                                                                   for q in results["queue"]]
    assert [row[6] for row in queued["data"]].count(True) == 1
    assert queued["data"][[row[6] for row in queued["data"]].index(True)][1] == results["prompt"]
    ranks = {row[1]: row[7] for row in prompts["data"] if row[7] is not None}
    assert ranks == {q["prompt"]: i + 1 for i, q in enumerate(results["queue"])}
    [report] = [a for a in artifacts(offline) if a["type"] == "report"]
    page = run_dir / "report" / "report.html"
    digest, size, _ = report["files"]["report.html"]
    assert report["name"] == logged["artifact"] and size == page.stat().st_size
    assert digest == base64.b64encode(hashlib.md5(page.read_bytes()).digest()).decode()
    assert "<title>sst2 · ape · seed 0" in page.read_text()
