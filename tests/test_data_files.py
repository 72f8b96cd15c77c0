"""Datasets without Python: a dataset file (CSV + image folder) through run → table → metrics, the shipped HAM10000
file with its real-format generator and `data check` on damaged copies, `data download` from a Hugging Face cache
in the library's own layout (the library's resolution code runs, offline), a gated repository through the
library's own exception, and data cards."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from tests.helpers import TABLE_DATASET_FILE, tiny_tokenize, write_table_dataset

FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _forget_dataset_files():
    """Each test's dataset files are its own: the same name from another test's folder is no clash."""
    from fairbench.datasets.tablefile import registered_dataset_files, unregister_dataset_file

    before = set(registered_dataset_files())
    yield
    for path in set(registered_dataset_files()) - before:
        unregister_dataset_file(path)


# ---------------------------------------------------------------- a dataset file: CSV + PNG folder

@pytest.mark.slow
def test_csv_png_dataset_file_runs_run_table_metrics(tmp_path):
    spec = write_table_dataset(tmp_path / "data")
    out = tmp_path / "results"
    ran = invoke("run", "--dataset", spec, "--method", "clip,fairclip", "--seeds", "1", "--out", out, *FAST)
    assert ran.exit_code == 0, ran.output
    records = [json.loads(p.read_text()) for p in sorted(out.rglob("result.json"))]
    assert sorted((r["method"], r["attribute"]) for r in records) == [
        ("clip", None), ("fairclip", "age"), ("fairclip", "site")]
    for rec in records:
        assert rec["dataset"]["name"] == "lesions-csv" and rec["dataset"]["n"] == {"train": 48, "val": 24, "test": 32}
        groups = rec["metrics"]["test"]["attributes"]
        assert list(groups["site"]["groups"]) == ["arm", "leg"]
        assert list(groups["age"]["groups"]) == ["up to 50", "over 50"]
    table = invoke("table", "--out", out, "--format", "markdown")
    assert table.exit_code == 0 and "attribute: site" in table.output and "dataset: lesions-csv" in table.output
    (preds,) = [p for p in out.rglob("predictions_test.csv") if "/clip/" in str(p)]
    metrics = invoke("metrics", preds, "--dataset", spec)
    assert metrics.exit_code == 0, metrics.output
    for word in ("site", "arm", "leg", "up to 50", "over 50"):
        assert word in metrics.output
    # the age groups in the predictions are the file's bins, recomputed with numpy: (a, 50] vs (50, b]
    with open(tmp_path / "data" / "meta.csv", newline="") as fh:
        ages = {r["image_id"]: float(r["age_years"]) for r in csv.DictReader(fh)}
    with open(preds, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["age"]) for r in rows] == [int(np.digitize(ages[r["sample"]], [50], right=True)) for r in rows]


def test_dataset_file_reads_labels_groups_bins_captions_and_splits(tmp_path):
    from fairbench.registry import get_dataset

    spec = write_table_dataset(tmp_path / "d")
    cls = get_dataset(str(spec))
    assert cls.name == "lesions-csv" and cls.dataset_file == str(spec.resolve())
    assert cls.attributes == {"site": {0: "arm", 1: "leg"}, "age": {0: "up to 50", 1: "over 50"}}
    loaded = cls().load(tmp_path / "d", image_size=16, tokenize=tiny_tokenize, tokenizer_key="t",
                        text_source="caption", cache_dir=tmp_path / "cache")
    with open(tmp_path / "d" / "meta.csv", newline="") as fh:
        rows = {r["image_id"]: r for r in csv.DictReader(fh)}
    for split, fold in (("train", "train"), ("val", "valid"), ("test", "test")):
        part = loaded.split(split)
        assert [rows[i]["fold"] for i in part.sample_ids] == [fold] * len(part)
        assert part.labels.tolist() == [int(rows[i]["finding"] == "malignant") for i in part.sample_ids]
        assert part.attributes["site"].tolist() == [["arm", "leg"].index(rows[i]["site"]) for i in part.sample_ids]
        assert part.texts == [f"A photo of a {rows[i]['finding']} lesion on the {rows[i]['site']}"
                              for i in part.sample_ids]
        # grayscale: one stored channel, expanded; pixels = the PNG through open_clip's own eval transform
        assert part.images.shape == (len(part), 3, 16, 16) and part.images.stride(1) == 0
    import open_clip
    from PIL import Image

    ref = open_clip.image_transform(16, is_train=False, mean=(0.0,), std=(1.0,))
    first = loaded.train.sample_ids[0]
    expected = ref(Image.open(tmp_path / "d" / "images" / f"{first}.png"))  # open_clip converts to RGB itself
    got = loaded.train.images[0].float() / 255
    assert float((got - expected).abs().max()) <= 1 / 255 + 1e-6


def test_rgb_jpeg_matches_open_clip_transform(tmp_path):
    import open_clip
    from PIL import Image

    from fairbench.datasets.table import clip_transform_image

    rng = np.random.default_rng(3)
    path = tmp_path / "x.jpg"
    Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(path, quality=95)
    got = clip_transform_image(path, 32, 3)
    expected = open_clip.image_transform(32, is_train=False, mean=(0.0,) * 3, std=(1.0,) * 3)(Image.open(path))
    assert got.shape == (3, 32, 32)
    assert float(np.abs(got / 255.0 - expected.numpy()).max()) <= 1 / 255 + 1e-6
    # 16-bit grayscale is scaled (Pillow's own conversion would clip everything above 255 to white)
    wide = tmp_path / "wide.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535, 32768]], dtype=np.uint16)).save(wide)
    from fairbench.datasets.table import decode_image

    assert np.asarray(decode_image(wide, 1)).tolist() == [[0, 100, 255, 128]]


def test_dataset_file_mistakes_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TABLE_DATASET_FILE.replace('closed = "right"', 'closed = "middle"'))
    r = invoke("run", "--dataset", bad, "--method", "clip", "--dry-run")
    assert r.exit_code == 2 and "attributes.age.closed" in r.output and "Traceback" not in r.output
    both = "[split]\nfractions = { train = 0.8, val = 0.1, test = 0.1 }\n"
    bad.write_text(TABLE_DATASET_FILE.replace("[split]\n", both))
    r = invoke("data", "info", bad)
    assert r.exit_code == 2 and "exactly one of column" in r.output
    r = invoke("data", "info", tmp_path / "missing.toml")
    assert r.exit_code == 2 and "dataset file not found" in r.output


def test_split_files_patient_leaks_and_the_fingerprint(tmp_path):
    from fairbench.datasets.tablerows import read_rows
    from fairbench.datasets.tablespec import read_dataset_file
    from fairbench.registry import get_dataset

    spec = write_table_dataset(tmp_path / "d")
    with open(tmp_path / "d" / "meta.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    # one CSV per split instead of a split column: the same samples in the same splits
    for fold in ("train", "valid", "test"):
        with open(tmp_path / "d" / f"{fold}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([header, *[r for r in body if r[2] == fold]])
    by_files = tmp_path / "d" / "files.toml"
    by_files.write_text(spec.read_text().replace('name = "lesions-csv"', 'name = "lesions-files"').replace(
        'column = "fold"\nvalues = { train = ["train"], val = ["valid"], test = ["test"] }',
        'files = { train = "train.csv", val = "valid.csv", test = "test.csv" }'))
    a, b = read_rows(read_dataset_file(spec), tmp_path / "d"), read_rows(read_dataset_file(by_files), tmp_path / "d")
    assert a.problems == b.problems == []
    assert {k: [s.id for s in v] for k, v in a.samples.items()} == {k: [s.id for s in v] for k, v in b.samples.items()}
    # a patient in two splits is named by row
    body[1][1] = body[-1][1]
    with open(tmp_path / "d" / "meta.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    leak = read_rows(read_dataset_file(spec), tmp_path / "d").problems
    assert leak == [f"meta.csv row {n} ({body[n - 1][0]}): patient {body[-1][1]!r} is in test and in train "
                    f"(meta.csv row 2); keep each patient in one split" for n in (len(body) - 1, len(body))]
    # the fingerprint follows the declarations that change numbers (a zero-shot prompt), not the prose
    body[1][1] = "P-own"
    with open(tmp_path / "d" / "meta.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    base = get_dataset(str(spec))().identify(tmp_path / "d", "caption").fingerprint
    edits = [('licence = "CC0 1.0"', 'licence = "CC BY 4.0"'),
             ('prompts = ["A photo of a benign lesion"', 'prompts = ["A photo of a harmless lesion"')]
    for n, (old, new) in enumerate(edits):
        other = tmp_path / "d" / f"v{n}.toml"
        other.write_text(spec.read_text().replace('name = "lesions-csv"', f'name = "lesions-v{n}"').replace(old, new))
        same = get_dataset(str(other))().identify(tmp_path / "d", "caption").fingerprint == base
        assert same == (n == 0)


def test_readme_dataset_file_example_reads_the_data_it_describes(tmp_path):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (example,) = [t for t in re.findall(r"```toml\n(.*?)```", readme, flags=re.S) if "[table]" in t]
    write_table_dataset(tmp_path / "d")
    (tmp_path / "d" / "lesions.toml").write_text(example)
    r = invoke("data", "check", tmp_path / "d", "--dataset", tmp_path / "d" / "lesions.toml")
    assert r.exit_code == 0 and "no problems found" in r.output, r.output
    assert "site" in r.output and "over 50" in r.output


@pytest.mark.slow
def test_planned_jobs_carry_the_dataset_file_to_other_processes(tmp_path):
    """A worker or SLURM job looks the dataset up by name after loading the job's plugins: the file must be one."""
    import subprocess
    import sys

    from fairbench.runs.request import request_from_options

    spec = write_table_dataset(tmp_path / "d")
    planned = request_from_options(methods=["clip"], seeds=1, dataset=str(spec)).plan(
        tmp_path / "out", data=str(tmp_path / "d"), pretrained=None)
    assert planned[0].dataset == "lesions-csv" and str(spec.resolve()) in planned[0].plugins
    code = ("import sys; from fairbench.registry import load_plugins, get_dataset; load_plugins(sys.argv[1:], "
            "methods=False); print(get_dataset('lesions-csv').attributes)")
    fresh = subprocess.run([sys.executable, "-c", code, *planned[0].plugins], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1])
    assert fresh.returncode == 0 and "over 50" in fresh.stdout, fresh.stderr


def test_folder_of_dataset_files_registers_them_all(tmp_path):
    folder = tmp_path / "datasets"
    folder.mkdir()
    for name in ("derm-a", "derm-b"):
        (folder / f"{name}.toml").write_text(TABLE_DATASET_FILE.replace('name = "lesions-csv"', f'name = "{name}"'))
    listed = invoke("data", "list", "--plugin", folder)
    assert listed.exit_code == 0 and "derm-a" in listed.output and "derm-b" in listed.output


def test_drawn_split_keeps_patients_together_and_follows_fractions(tmp_path):
    from fairbench.datasets.tablerows import read_rows
    from fairbench.datasets.tablespec import read_dataset_file

    spec_path = write_table_dataset(tmp_path / "d", {"all": 200})
    text = spec_path.read_text().replace('column = "fold"\nvalues = { train = ["train"], val = ["valid"], test = '
                                         '["test"] }', "fractions = { train = 0.8, val = 0.1, test = 0.1 }\nseed = 4")
    spec_path.write_text(text)
    rows = read_rows(read_dataset_file(spec_path), tmp_path / "d")
    assert rows.problems == []
    with open(tmp_path / "d" / "meta.csv", newline="") as fh:
        patient = {r["image_id"]: r["patient"] for r in csv.DictReader(fh)}
    where = {patient[s.id]: s.split for split in ("train", "val", "test") for s in rows.samples[split]}
    for split in ("train", "val", "test"):  # every image of a patient in its patient's split
        assert all(where[patient[s.id]] == split for s in rows.samples[split])
    # independent recount: 100 patients, numpy's permutation of the sorted ids, cut at 80 / 10 / 10
    units = sorted(set(patient.values()))
    order = np.random.default_rng(4).permutation(len(units))
    expected = {units[i]: "train" if k < 80 else "val" if k < 90 else "test" for k, i in enumerate(order)}
    assert where == expected


# ---------------------------------------------------------------- HAM10000: shipped file, generator, data check

@pytest.fixture(scope="module")
def ham(tmp_path_factory) -> Path:
    from fairbench.registry import get_dataset

    return get_dataset("ham10000")().synthesize(tmp_path_factory.mktemp("ham") / "ham", n_images=80, size=48)


def test_ham10000_synthetic_is_in_the_real_format_and_checks_clean(ham):
    with open(ham / "HAM10000_metadata.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
    assert all((ham / f"HAM10000_images_part_{1 + i % 2}" / f"{r['image_id']}.jpg").is_file()
               for i, r in enumerate(rows))
    r = invoke("data", "check", ham, "--dataset", "ham10000")
    assert r.exit_code == 0 and "no problems found" in r.output, r.output
    n_malignant = sum(row["dx"] in ("mel", "akiec") for row in rows)
    valid = [line for line in r.output.splitlines() if "valid, malignant" in line]
    assert sum(int(line.split("malignant ")[1].split(";")[0].split(",")[0]) for line in valid) == n_malignant


def test_ham10000_data_check_names_every_damage_by_row_and_file(ham, tmp_path):
    from PIL import Image

    data = shutil.copytree(ham, tmp_path / "damaged")
    table = data / "HAM10000_metadata.csv"
    with open(table, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    gone, cut, odd = body[2][1], body[5][1], body[7][1]
    next(data.rglob(f"{gone}.jpg")).unlink()  # missing image
    jpg = next(data.rglob(f"{cut}.jpg"))
    jpg.write_bytes(jpg.read_bytes()[:-200])  # truncated JPEG (opens; only decoding fails)
    with Image.open(jpg) as im:
        im.verify()  # Pillow's verify() does not see it: the check must decode
    body[7][5] = "other"  # unknown group value
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *body])
    r = invoke("data", "check", data, "--dataset", "ham10000")
    assert r.exit_code == 1
    out = " ".join(r.output.split())
    assert f"HAM10000_metadata.csv row 3 ({gone}): image {gone}.jpg not found" in out
    assert f"{cut}.jpg: unreadable image, corrupt or truncated" in out and "truncated" in out
    assert f"HAM10000_metadata.csv row 8 ({odd}): sex 'other' in column 'sex' is no known group" in out
    assert "3 problem(s)" in out
    # the loader stops on the same first problem, before any image is cached
    from fairbench.datasets import DatasetError
    from fairbench.registry import get_dataset

    with pytest.raises(DatasetError, match=f"row 3 \\({gone}\\).*and 1 more"):
        get_dataset("ham10000")().load(data, image_size=16, tokenize=tiny_tokenize, tokenizer_key="t",
                                       text_source="caption", cache_dir=tmp_path / "cache")
    # a missing column
    dropped = shutil.copytree(ham, tmp_path / "no-sex")
    with open(dropped / "HAM10000_metadata.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    with open(dropped / "HAM10000_metadata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([row[:5] + row[6:] for row in rows])
    r = invoke("data", "check", dropped, "--dataset", "ham10000")
    out = " ".join(r.output.split())
    assert r.exit_code == 1 and "HAM10000_metadata.csv: no column 'sex'" in out and "1 problem(s)" in out


def test_truncated_jpeg_never_reaches_the_image_cache(ham, tmp_path):
    """Damage after a first load: the cache is keyed by every image's bytes, so the damaged file is read again
    and named, never served from the cache built before."""
    from fairbench.datasets import DatasetError
    from fairbench.registry import get_dataset

    data = shutil.copytree(ham, tmp_path / "later")
    ds = get_dataset("ham10000")()
    kwargs = {"image_size": 16, "tokenize": tiny_tokenize, "tokenizer_key": "t", "text_source": "caption",
              "cache_dir": tmp_path / "cache"}
    first = ds.load(data, **kwargs)
    assert first.tag == "ham10000-synthetic" and first.train.images.shape[1:] == (3, 16, 16)
    victim = next(data.rglob(f"{first.test.sample_ids[0]}.jpg"))
    victim.write_bytes(victim.read_bytes()[:-300])
    with pytest.raises(DatasetError, match=f"{victim.name}: unreadable image"):
        ds.load(data, **kwargs)


def test_ham10000_card_and_info(ham):
    r = invoke("data", "info", "ham10000", "--data", ham)
    assert r.exit_code == 0, r.output
    for text in ("licence: CC BY-NC 4.0", "doi:10.1038/sdata.2018.161", "mel or akiec", "MEDFAIR issue #17",
                 "< 60 vs >= 60", "attribute age: 60 or younger, over 60", "counts ("):
        assert text in r.output, text
    no_source = invoke("data", "download", "ham10000", "--to", ham.parent / "x")
    assert no_source.exit_code == 2 and "no download source" in no_source.output
    assert "dataverse" in no_source.output.lower() and "--data FOLDER" in no_source.output
    assert not (ham.parent / "x").exists()
    fair = invoke("data", "info", "fairvlmed")
    assert "CC BY-NC-ND 4.0" in fair.output and "White / non-White" in fair.output


@pytest.mark.slow
def test_ham10000_runs_clip_and_fairclip_two_seeds_with_a_table(ham, tmp_path):
    out = tmp_path / "results"
    r = invoke("run", "--dataset", "ham10000", "--data", ham, "--method", "clip,fairclip", "--seeds", "2",
               "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    records = [json.loads(p.read_text()) for p in out.rglob("result.json")]
    assert len(records) == 2 + 2 * 2 and {r["dataset"]["tag"] for r in records} == {"ham10000-synthetic"}
    table = invoke("table", "--out", out, "--format", "markdown")
    assert table.exit_code == 0 and "attribute: sex" in table.output and "attribute: age" in table.output
    report = invoke("report", "--out", out, "--to", tmp_path / "r.html", "--no-plots")
    assert report.exit_code == 0, report.output
    page = (tmp_path / "r.html").read_text()
    assert "data card: ham10000" in page and "CC BY-NC 4.0" in page


# ---------------------------------------------------------------- data download from a Hugging Face cache

REPO_ID = "harvardairobotics/FairVLMed"


def _populate_hub_cache(hub: Path, source: Path, commit: str) -> Path:
    """The library's cache layout by hand: blobs named by content, snapshot symlinks, refs/main without newline."""
    import hashlib

    repo = hub / f"datasets--{REPO_ID.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        rel = Path("Harvard-FairVLMed") / path.relative_to(source)
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(path.read_bytes())
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(rel.parts) + 1)) / "blobs" / blob.name)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)  # no trailing newline: the library reads it raw
    return repo


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def test_download_lays_out_a_cached_snapshot_checks_it_and_reruns_as_a_no_op(dataset, offline_hub, tmp_path):
    from huggingface_hub import scan_cache_dir

    commit = "a" * 40
    _populate_hub_cache(offline_hub, dataset, commit)
    (repo,) = scan_cache_dir(offline_hub).repos  # the layout is the library's own
    assert repo.repo_id == REPO_ID and {r.commit_hash for r in repo.revisions} == {commit}
    to = tmp_path / "fairvlmed"
    r = invoke("data", "download", "fairvlmed", "--to", to)
    assert r.exit_code == 0, r.output
    assert f"commit {commit[:12]}" in r.output and "no problems found" in r.output
    expected = sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file())
    got = sorted(str(p.relative_to(to)) for p in to.rglob("*") if p.is_file() and p.name != ".fairbench-download.json")
    assert got == expected
    assert all((to / name).read_bytes() == (dataset / name).read_bytes() for name in expected)
    assert all(not p.is_symlink() for p in to.rglob("*"))
    check = invoke("data", "check", to)
    assert check.exit_code == 0
    stamps = {p: p.stat().st_mtime_ns for p in to.rglob("*")}
    again = invoke("data", "download", "fairvlmed", "--to", to)
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert {p: p.stat().st_mtime_ns for p in to.rglob("*")} == stamps
    # not in the cache while offline: one line, and no folder
    missing = invoke("data", "download", "fairvlmed", "--to", tmp_path / "other", "--repo", "nobody/nothing")
    assert missing.exit_code == 2 and "offline mode" in missing.output and not (tmp_path / "other").exists()


def test_gated_repository_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    httpx2 = pytest.importorskip("httpx2", reason="huggingface_hub 2 talks to the Hub through httpx2")
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError
    from huggingface_hub.utils._http import default_client_factory

    def gated(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(403, headers={"X-Error-Code": "GatedRepo",
                                             "X-Error-Message": "Access to this dataset is restricted."},
                               request=request)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(gated)))
    try:
        with pytest.raises(GatedRepoError):  # the library's own classification of the Hub's answer
            hub.snapshot_download(REPO_ID, repo_type="dataset", cache_dir=str(tmp_path / "probe"))
        r = invoke("data", "download", "fairvlmed", "--to", tmp_path / "fv")
    finally:
        hub.set_client_factory(default_client_factory)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "gated dataset repository" in r.output and f"https://huggingface.co/datasets/{REPO_ID}" in r.output
    assert not (tmp_path / "fv").exists() and not list(tmp_path.glob(".fv*"))
    assert not [p for p in (tmp_path / "hub").rglob("*") if p.is_file()]


def test_html_report_section_carries_the_data_card(tmp_path):
    from fairbench.report.html import build_report
    from fairbench.report.load import load_results
    from tests.helpers import write_run

    write_run(tmp_path, "clip", "b16", None, 0)
    page, _ = build_report(load_results(tmp_path), plots=False)
    assert "data card: fairvlmed" in page and "CC BY-NC-ND 4.0" in page and "White / non-White" in page



def test_download_unpacks_archives_and_refuses_members_that_leave_the_folder(offline_hub, tmp_path):
    import zipfile

    from fairbench.datasets.card import HubSource
    from fairbench.datasets.download import DownloadError, download

    write_table_dataset(tmp_path / "src")
    snap = offline_hub / "datasets--org--lesions" / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    with zipfile.ZipFile(snap / "lesions.zip", "w") as zf:
        for path in sorted((tmp_path / "src").rglob("*")):
            if path.is_file():
                zf.write(path, Path("lesions") / path.relative_to(tmp_path / "src"))
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("b" * 40)
    got = download(HubSource("org/lesions", root_file="meta.csv"), tmp_path / "to")
    assert got.commit == "b" * 40 and (tmp_path / "to" / "meta.csv").is_file() and not list(got.path.rglob("*.zip"))
    assert sorted(p.name for p in (tmp_path / "to" / "images").iterdir()) == sorted(
        p.name for p in (tmp_path / "src" / "images").iterdir())
    with zipfile.ZipFile(snap / "lesions.zip", "w") as zf:
        zf.writestr("../escaped.txt", "x")
    (snap.parent.parent / "refs" / "main").write_text("b" * 40)
    with pytest.raises(DownloadError, match="would leave the folder"):
        download(HubSource("org/lesions"), tmp_path / "to2")
    assert not (tmp_path / "to2").exists() and not (tmp_path / "escaped.txt").exists()
