"""Analysis (SPEC §8): alignment, correlation, PCA, neighbours, export, report, ablation, on toy data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lgm.analysis.alignment import alignment_matrix, knn_indices, knn_overlap, mutual_knn
from lgm.analysis.transfer import (alignment_vs_transfer, normalize_columns, off_diagonal_pairs, pearson, ranks,
                                   spearman, transfer_matrix)
from lgm.errors import LgmError


def random_features(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- mutual k-NN


def test_mutual_knn_is_one_for_identical_and_rotated_scaled_embeddings():
    a = random_features(300, 16, 0)
    assert mutual_knn(a, a.clone(), k=10) == 1.0
    q, _ = torch.linalg.qr(random_features(16, 16, 1))
    scale = torch.rand(300, 1, generator=torch.Generator().manual_seed(2)) + 0.5
    # Rotation and per-sample scaling keep cosine neighbours: still 1.
    assert mutual_knn(a, (a @ q) * scale, k=10) == pytest.approx(1.0)


def test_mutual_knn_of_independent_embeddings_is_about_k_over_n():
    n, k = 400, 10
    values = [mutual_knn(random_features(n, 32, s), random_features(n, 32, 100 + s), k) for s in range(3)]
    expected = k / (n - 1)
    assert all(0.3 * expected < v < 3 * expected for v in values), (values, expected)
    # Related embeddings (shared component) are clearly more aligned than chance.
    base = random_features(n, 32, 7)
    related = mutual_knn(base + 0.3 * random_features(n, 32, 8), base + 0.3 * random_features(n, 32, 9), k)
    assert related > 10 * expected


def test_mutual_knn_is_symmetric_and_matrix_is_consistent():
    a, b, c = random_features(200, 8, 0), random_features(200, 12, 1), random_features(200, 4, 2)
    b = b + torch.cat([a, a[:, :4]], 1)  # partly aligned with a
    assert mutual_knn(a, b, 5) == mutual_knn(b, a, 5)
    m = alignment_matrix({"a": a, "b": b, "c": c}, k=5)
    assert [m[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert all(m[i][j] == m[j][i] for i in range(3) for j in range(3))
    assert m[0][1] == pytest.approx(mutual_knn(a, b, 5)) and m[0][1] > m[0][2]


def test_knn_excludes_self_and_overlap_counts_by_hand():
    # Points on a line: neighbours of 0 are 1 then 2 (never itself, even though cos(x, x) is the largest).
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.3], [0.0, 1.0]])
    idx = knn_indices(x, 2)
    assert idx[0].tolist() == [1, 2] and all(i not in row for i, row in enumerate(idx.tolist()))
    ia = torch.tensor([[1, 2], [0, 2], [1, 0]])
    ib = torch.tensor([[2, 1], [2, 1], [0, 2]])
    assert knn_overlap(ia, ib).tolist() == [1.0, 0.5, 0.5]
    with pytest.raises(LgmError, match="k must be"):
        knn_indices(x, 4)


# ----------------------------------------------------------------------------------------------- correlation


def test_pearson_and_spearman_by_hand():
    # deviations (-2,-1,0,1,2) and (-1,-2,1,0,2): sxy = 8, sxx = syy = 10 -> r = 0.8;
    # ranks equal values, sum d^2 = 4 -> rho = 1 - 6*4 / (5*24) = 0.8.
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    assert pearson(x, y) == pytest.approx(0.8)
    assert spearman(x, y) == pytest.approx(0.8)
    assert pearson(x, [10 - v for v in x]) == pytest.approx(-1.0)
    assert ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    # Spearman is rank-based: a monotone transform does not change it, it does change Pearson.
    assert spearman(x, [v ** 3 for v in y]) == pytest.approx(0.8)
    assert pearson(x, [v ** 3 for v in y]) != pytest.approx(0.8)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def hand_tables(tmp_path):
    cross = {"backbones": ["X", "Y", "Z"], "rows": [
        {"artifact": "rx", "distilled_with": "X", "nn1": {"X": 0.8, "Y": 0.4, "Z": 0.3}, "top1": {}},
        {"artifact": "ry", "distilled_with": "Y", "nn1": {"X": 0.6, "Y": 0.5, "Z": 0.25}, "top1": {}},
        {"artifact": "rz", "distilled_with": "Z", "nn1": {"X": 0.2, "Y": 0.45, "Z": 0.6}, "top1": {}},
    ]}
    align = {"kind": "alignment", "backbones": ["Z", "Y", "X"], "k": 10,  # another order on purpose
             "matrix": [[1.0, 0.4, 0.2], [0.4, 1.0, 0.3], [0.2, 0.3, 1.0]]}
    (tmp_path / "crossmodel.json").write_text(json.dumps(cross))
    (tmp_path / "alignment.json").write_text(json.dumps(align))
    return cross, align


def test_normalized_transfer_and_correlation_on_a_hand_built_table(tmp_path):
    cross, align = hand_tables(tmp_path)
    names, raw = transfer_matrix(cross)
    norm = normalize_columns(raw)
    # Column X / 0.8, column Y / 0.5, column Z / 0.6.
    assert norm[1][0] == pytest.approx(0.75) and norm[2][0] == pytest.approx(0.25)
    assert norm[0][1] == pytest.approx(0.8) and norm[2][1] == pytest.approx(0.9)
    assert norm[0][2] == pytest.approx(0.5) and norm[1][2] == pytest.approx(0.25 / 0.6)
    assert norm[0][0] is None
    pairs = off_diagonal_pairs(names, norm, align["backbones"], align["matrix"])
    assert [(a, b, y) for a, b, _, y in pairs] == [("X", "Y", 0.3), ("X", "Z", 0.2), ("Y", "X", 0.3),
                                                   ("Y", "Z", 0.4), ("Z", "X", 0.2), ("Z", "Y", 0.4)]
    r = alignment_vs_transfer(tmp_path / "crossmodel.json", tmp_path / "alignment.json")
    # Reference values (scipy.stats.pearsonr / spearmanr on the six pairs above).
    assert r["pearson"] == pytest.approx(0.501994278919025)
    assert r["spearman"] == pytest.approx(0.4780914437337575)
    scipy_stats = pytest.importorskip("scipy.stats")
    xs, ys = [p[2] for p in pairs], [p[3] for p in pairs]
    assert r["pearson"] == pytest.approx(scipy_stats.pearsonr(xs, ys).statistic)
    assert r["spearman"] == pytest.approx(scipy_stats.spearmanr(xs, ys).statistic)
    md = (tmp_path / "alignment_vs_transfer.md").read_text()
    assert "75.0" in md and "Pearson r = 0.502" in md


def test_alignment_vs_transfer_command(tmp_path, capsys):
    from lgm.cli import main

    hand_tables(tmp_path)
    assert main(["alignment-vs-transfer", str(tmp_path / "crossmodel.json"), str(tmp_path / "alignment.json"),
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "Spearman rho = 0.478" in out and "| X |" in out
    r = json.loads((tmp_path / "o" / "alignment_vs_transfer.json").read_text())
    assert r["num_pairs"] == 6 and r["alignment"][0][1] == 0.3


def test_alignment_vs_transfer_names_bad_inputs(tmp_path):
    hand_tables(tmp_path)
    old = {"backbones": ["X"], "rows": [{"artifact": "a", "distilled_with": "X", "top1": {"X": 0.5}}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(LgmError, match="lack 'nn1'"):
        alignment_vs_transfer(tmp_path / "old.json", tmp_path / "alignment.json")
    with pytest.raises(LgmError, match="not an alignment.json"):
        alignment_vs_transfer(tmp_path / "crossmodel.json", tmp_path / "crossmodel.json")


# ----------------------------------------------------------------------------------------------- run fixtures


@pytest.fixture(scope="module")
def tiny_run(fashion_root, tmp_path_factory):
    """A finished 6-step toy run with snapshots every 2 steps (and its distillation twin without them)."""
    from lgm.distillation import distill
    from tests.conftest import TINY

    base = tmp_path_factory.mktemp("runs")
    settings = {**TINY, "steps": 6, "data_root": str(fashion_root), "device": "cpu"}
    with_snaps = distill("fashion-mnist", "toy_cnn", out=base / "snap", snapshot_every=2, **settings)
    plain = distill("fashion-mnist", "toy_cnn", out=base / "plain", **settings)
    return base / "snap", with_snaps, plain


def test_snapshots_do_not_change_the_run_or_its_hash(tiny_run):
    from lgm.config import DistillConfig
    from lgm.rundir import read_snapshots

    path, with_snaps, plain = tiny_run
    assert torch.equal(with_snaps.images, plain.images)
    assert with_snaps.meta["config_hash"] == plain.meta["config_hash"]
    cfg = DistillConfig("d", "b")
    assert cfg.hash() == DistillConfig("d", "b", snapshot_every=5).hash()
    snaps = read_snapshots(path)
    assert [s for s, _ in snaps] == [0, 2, 4, 6]
    assert all(x.dtype == torch.uint8 and x.shape == (10, 3, 16, 16) for _, x in snaps)
    # The last snapshot is the result, quantised.
    assert torch.allclose(snaps[-1][1].float() / 255, with_snaps.images, atol=0.5 / 255 + 1e-6)
    assert with_snaps.meta["command_line"]
    with pytest.raises(LgmError, match="snapshot-every"):
        DistillConfig("d", "b", snapshot_every=-1).validate()


def test_export_pngs_and_timelapse_decode(tiny_run, tmp_path):
    from PIL import Image

    from lgm.cli import main

    path, result, _ = tiny_run
    assert main(["export", str(path), "--png", str(tmp_path / "png"), "--timelapse", str(tmp_path / "t.gif")]) == 0
    files = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert "grid.png" in files and "000_T-shirt_top.png" in files and "009_Ankle_boot.png" in files
    assert len(files) == 11
    with Image.open(tmp_path / "png" / "003_Dress.png") as im:
        pix = torch.from_numpy(np.array(im.convert("RGB"))).float() / 255
    assert torch.allclose(pix.permute(2, 0, 1), result.images[3], atol=0.5 / 255 + 1e-6)
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 4
        gif.seek(3)
        gif.convert("RGB").load()


def test_timelapse_without_snapshots_names_the_option(fashion_root, tmp_path):
    from lgm.analysis.export import export_timelapse
    from lgm.distillation import distill
    from tests.conftest import TINY

    distill("fashion-mnist", "toy_cnn", out=tmp_path / "r", data_root=str(fashion_root), device="cpu",
            **{**TINY, "steps": 2})
    with pytest.raises(LgmError, match="--snapshot-every"):
        export_timelapse(tmp_path / "r", tmp_path / "x.gif")


# ----------------------------------------------------------------------------------------------- PCA


def test_pca_shapes_ordering_and_known_directions():
    from lgm.analysis.pca import fit_pca

    g = torch.Generator().manual_seed(0)
    # Variances 9, 4, 1, 0.01 along the coordinate axes.
    x = torch.randn(2000, 4, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.1]) + 5
    p = fit_pca(x, 2)
    assert p.components.shape == (2, 4) and p.transform(x).shape == (2000, 2)
    assert p.explained_variance[0] > p.explained_variance[1]
    assert float(p.explained_ratio.sum()) < 1
    assert p.explained_ratio[0] == pytest.approx(9 / 14.01, abs=0.03)
    assert abs(float(p.components[0, 0])) > 0.99 and abs(float(p.components[1, 1])) > 0.99
    assert torch.allclose(p.components @ p.components.t(), torch.eye(2, dtype=torch.float64), atol=1e-10)
    full = fit_pca(x, 4)
    assert float(full.explained_ratio.sum()) == pytest.approx(1.0)
    assert (full.explained_variance[:-1] >= full.explained_variance[1:]).all()


def test_centroid_distance_in_class_spreads_by_hand():
    from lgm.analysis.pca import centroid_distances

    real = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [10.0, 10.0], [12.0, 10.0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    # Class 0: centroid 0, every member at distance 1 -> spread 1. Class 1: centroid (11, 10), spread 1.
    out = centroid_distances(real, labels, torch.tensor([[3.0, 4.0], [11.0, 10.5]]), torch.tensor([0, 1]))
    assert out[0]["distance_in_spreads"] == pytest.approx(5.0) and out[0]["fraction_of_class_closer"] == 1.0
    assert out[1]["distance_in_spreads"] == pytest.approx(0.5) and out[1]["fraction_of_class_closer"] == 0.0


def test_pca_and_neighbors_commands_write_their_files(tiny_run, tmp_path, monkeypatch):
    from PIL import Image

    from lgm.cli import main

    path, result, _ = tiny_run
    cache = str(tmp_path / "cache")
    assert main(["pca", str(path), "--n", "100", "--device", "cpu", "--cache-dir", cache]) == 0
    pca = json.loads((path / "analysis" / "pca.json").read_text())
    assert len(pca["distilled_2d"]) == 10 and len(pca["distilled"]) == 10
    assert pca["real_images"] == 100
    r = pca["explained_variance_ratio"]
    assert r[0] >= r[1] > 0
    with Image.open(path / "analysis" / "pca.png") as im:
        assert im.size[0] > 200
    assert main(["neighbors", str(path), "--device", "cpu", "--cache-dir", cache, "--same-class"]) == 0
    nb = json.loads((path / "analysis" / "neighbors.json").read_text())
    assert nb["searched_images"] == 200 and len(nb["pairs"]) == 10
    assert all(p["same_class"] and -1 <= p["cosine"] <= 1 for p in nb["pairs"])
    with Image.open(path / "analysis" / "neighbors.png") as im:
        assert im.size == (10 * 128, 2 * (128 + 14) + 8)


def test_nearest_real_by_hand():
    from lgm.analysis.neighbors import nearest_real

    real = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    rows, sims = nearest_real(torch.tensor([[0.1, 1.0], [3.0, 0.1]]), real)
    assert rows.tolist() == [1, 0]
    rows, sims = nearest_real(torch.tensor([[0.1, 1.0]]), real, torch.tensor([1]), torch.tensor([0, 0, 1]))
    assert rows.tolist() == [2] and float(sims[0]) == pytest.approx(1.1 / (2 ** 0.5 * (1.01 ** 0.5)))


def test_align_command_writes_matrix_files(fashion_root, tmp_path, capsys):
    from PIL import Image

    from lgm.cli import main

    out = tmp_path / "align"
    argv = ["align", "--dataset", "fashion-mnist", "--backbones", "toy_cnn", "effnet_lite0", "--random-init",
            "--k", "5", "--n", "100", "--res", "32", "--crop", "32", "--data-root", str(fashion_root),
            "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    r = json.loads((out / "alignment.json").read_text())
    assert r["backbones"] == ["toy_cnn", "effnet_lite0"] and r["n"] == 100 and r["k"] == 5
    m = r["matrix"]
    assert m[0][0] == m[1][1] == 1.0 and m[0][1] == m[1][0] and 0 <= m[0][1] <= 1
    assert (out / "alignment.csv").read_text().splitlines()[0] == ",toy_cnn,effnet_lite0"
    with Image.open(out / "alignment.png") as im:
        assert im.size[0] > 100
    assert "| toy_cnn |" in capsys.readouterr().out
    # The same images again: features come from the store, the matrix is identical.
    assert main(argv) == 0 and json.loads((out / "alignment.json").read_text())["matrix"] == m
    assert main(["align", "--dataset", "fashion-mnist", "--backbones", "toy_cnn", "--data-root",
                 str(fashion_root)]) == 2
    assert "at least two backbones" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- report


class PageParser:
    """Collects tags, attributes and text of an HTML page (html.parser)."""

    def __init__(self, text: str):
        from html.parser import HTMLParser

        self.imgs, self.ids, self.hrefs, self.tags, self.urls = [], set(), [], [], []
        self.id_order: list[str] = []  # ids in document order
        self.folded: list[str] = []  # table cells inside a <details> element
        self.cells: list[str] = []  # every table cell, in document order
        outer = self
        depth = {"details": 0, "td": 0}

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                outer.tags.append(tag)
                if tag in depth:
                    depth[tag] += 1
                if tag == "img":
                    outer.imgs.append(a.get("src", ""))
                if "id" in a:
                    outer.ids.add(a["id"])
                    outer.id_order.append(a["id"])
                if tag == "a":
                    outer.hrefs.append(a.get("href", ""))
                for k in ("src", "href", "srcset", "poster", "data"):
                    if k in a and tag != "img":
                        outer.urls.append(a[k])

            def handle_endtag(self, tag):
                if tag in depth:
                    depth[tag] -= 1

            def handle_data(self, data):
                if depth["td"]:
                    outer.cells.append(data)
                    if depth["details"]:
                        outer.folded.append(data)

        P().feed(text)


def check_self_contained(text: str) -> PageParser:
    import base64
    import io

    from PIL import Image

    page = PageParser(text)
    assert "http://" not in text and "https://" not in text
    for url in page.hrefs + page.urls:  # links stay on disk: relative, no scheme, not protocol-relative
        assert "://" not in url and not url.startswith("//"), url
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.size[0] > 0 and im.size[1] > 0
    return page


# What a reader looks for first: the images and how well they do; how they were made at the end.
RUN_PAGE_ORDER = ["images", "evaluation", "loss", "pca", "neighbors", "provenance", "config"]


def test_report_is_self_contained_with_every_section(tiny_run, tmp_path):
    from lgm.analysis.report import SECTIONS
    from lgm.cli import main

    path, _, _ = tiny_run
    cache = str(tmp_path / "cache")
    assert main(["pca", str(path), "--n", "100", "--device", "cpu", "--cache-dir", cache]) == 0
    assert main(["neighbors", str(path), "--device", "cpu", "--cache-dir", cache]) == 0
    (path / "eval.json").write_text(json.dumps({"toy_cnn/spec": {
        "top1": {"mean": 0.4321, "std": 0.01, "values": [0.42, 0.44]}, "top5": {"mean": 0.9, "std": 0.0},
        "nn1": 0.3}}))
    cross = tmp_path / "crossmodel.json"
    cross.write_text(json.dumps({"backbones": ["toy_cnn"], "rows": [
        {"artifact": str(path), "distilled_with": "toy_cnn", "top1": {"toy_cnn": 0.43}, "nn1": {"toy_cnn": 0.3},
         "cross_model_mean": None}]}))
    plain = path.parent / "plain"  # a second run: no analysis, no eval
    out = tmp_path / "report"
    assert main(["report", str(path), str(plain), "--out", str(out), "--crossmodel", str(cross)]) == 0
    text = (out / "snap.html").read_text()
    page = check_self_contained(text)
    assert set(SECTIONS) <= page.ids
    assert len(page.imgs) == 4  # loss curve, grid, PCA, neighbours
    assert "43.2 ± 1.0" in text and "T-shirt/top" in text and "toy_cnn" in text
    assert "command line" in text and "lgm version" in text
    # Results first, the config last and folded (a <details> element: it opens without JavaScript).
    assert [i for i in page.id_order if i in SECTIONS] == RUN_PAGE_ORDER
    assert "details" in page.tags and "summary" in page.tags
    config = json.loads((path / "config.json").read_text())
    assert {"steps", "lr", "augs", "seed"} <= set(page.folded) and set(config) <= set(page.folded)
    assert "43.2 ± 1.0" in page.cells and "43.2 ± 1.0" not in page.folded  # the results are not folded
    assert page.cells.index("43.2 ± 1.0") < page.cells.index("steps")
    other = check_self_contained((out / "plain.html").read_text())
    assert set(SECTIONS) <= other.ids and "not computed: lgm pca" in (out / "plain.html").read_text()
    assert [i for i in other.id_order if i in SECTIONS] == RUN_PAGE_ORDER
    index = check_self_contained((out / "index.html").read_text())
    assert index.hrefs == ["snap.html", "plain.html"] and len(index.imgs) == 2


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    from lgm.analysis.report import ReportConfig, write_reports

    (tmp_path / "empty").mkdir()
    with pytest.raises(LgmError, match="not a run directory"):
        write_reports((str(tmp_path / "empty"),), ReportConfig(out=str(tmp_path / "r")))


# ----------------------------------------------------------------------------------------------- ablation


def test_ablate_runs_every_variant_and_writes_table3(fashion_root, tmp_path, capsys):
    from lgm.cli import main

    out = tmp_path / "abl"
    argv = ["ablate", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--steps", "2", "--augs", "2",
            "--aug-values", "1", "2", "--res", "16", "--crop", "14", "--data-root", str(fashion_root),
            "--device", "cpu", "--repeats", "1", "--views", "2", "--epochs", "3", "--val-per-class", "3",
            "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    r = json.loads((out / "ablation.json").read_text())
    assert set(r["rows"]) == {"full", "no_decorrelate", "no_pyramid", "no_augment", "augs_1"}
    configs = {name: json.loads((out / name / "config.json").read_text()) for name in r["rows"]}
    full = configs["full"]
    for name, changed in (("no_decorrelate", {"decorrelate": False}), ("no_pyramid", {"param": "pixels"}),
                          ("no_augment", {"aug": "none"}), ("augs_1", {"augs": 1})):
        diff = {k: v for k, v in configs[name].items() if full[k] != v}
        assert {k: v for k, v in diff.items() if k != "grow_every"} == changed, name
    assert r["views_rows"] == {"1": "augs_1", "2": "full"}
    md = (out / "ablation.md").read_text()
    for label in ("Full (Ours)", "-Decorrelate", "-Pyramid", "-Augment", "A = 1", "A = 2", "Same eval"):
        assert label in md, label
    assert "Avg cross" not in md
    assert all(0 <= row["same"]["mean"] <= 1 for row in r["rows"].values())
    assert "| Full (Ours) |" in capsys.readouterr().out


def test_report_renders_in_a_headless_browser(tiny_run, tmp_path):
    """The page in real chromium: no console errors, no failed or outside requests, every image decoded."""
    from lgm.analysis.browser import find_chromium, inspect_page
    from lgm.analysis.report import SECTIONS
    from lgm.cli import main

    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium; CI installs it): browser check skipped")
    path, _, _ = tiny_run
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out)]) == 0
    shot = tmp_path / "shot.png"
    r = inspect_page(out / "snap.html", screenshot=shot)
    assert r["console_errors"] == [] and r["failed_requests"] == []
    assert all(u.startswith(("file:", "data:")) for u in r["requests"]), r["requests"]
    assert len(r["images"]) >= 2
    assert all(complete and w > 0 and h > 0 for complete, w, h, _ in r["images"]), r["images"]
    assert set(SECTIONS) <= set(r["ids"])
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size[0] == 1200 and im.size[1] > 900
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # not a blank page
    index = inspect_page(out / "index.html")
    assert index["failed_requests"] == [] and all(w > 0 for _, w, _, _ in index["images"])
