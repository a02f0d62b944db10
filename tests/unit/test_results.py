"""Result files: the JSON document, where it goes, and that it is replaced atomically."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from gpuboard.core.inference import OcrResult
from gpuboard.core.results import (
    ResultError,
    Timings,
    result_path,
    save_result,
    write_json_atomically,
)

OCR = OcrResult(
    text="INV-0042 TOTAL 2598",
    boxes=(((1.0, 2.0), (3.0, 2.0), (3.0, 4.0), (1.0, 4.0)),),
    scores=(0.99,),
    model="PP-OCRv6_det_small+PP-OCRv6_rec_small",
    provider="CPUExecutionProvider",
)
TIMINGS = Timings(
    download_s=0.01,
    model_load_s=0.9,
    slot_wait_s=0.2,
    inference_s=0.1,
    inference_started_at=1_700_000_000.0,
    inference_ended_at=1_700_000_000.1,
)


def test_saves_the_whole_record_under_the_results_dir(isolated_home: Path) -> None:
    execution = {"mode": "inference-host", "host_pid": 7}
    path = save_result(42, "gpu-1", OCR, TIMINGS, execution=execution)
    assert path == isolated_home / "results" / "42.json" == result_path(42)
    assert json.loads(path.read_text()) == {
        "image_id": 42,
        "worker": "gpu-1",
        "text": "INV-0042 TOTAL 2598",
        "boxes": [[[1.0, 2.0], [3.0, 2.0], [3.0, 4.0], [1.0, 4.0]]],
        "scores": [0.99],
        "model": "PP-OCRv6_det_small+PP-OCRv6_rec_small",
        "provider": "CPUExecutionProvider",
        "timings": {
            "download_s": 0.01,
            "model_load_s": 0.9,
            "slot_wait_s": 0.2,
            "inference_s": 0.1,
            "inference_started_at": 1_700_000_000.0,
            "inference_ended_at": 1_700_000_000.1,
            "transfer_s": None,
        },
        "execution": {"mode": "inference-host", "host_pid": 7},
    }


def test_results_dir_setting_is_honoured_and_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUBOARD_RESULTS_DIR", str(tmp_path / "deep" / "er"))
    assert save_result(1, "w", OCR, TIMINGS) == tmp_path / "deep" / "er" / "1.json"


def test_a_rerun_replaces_the_result_and_leaves_no_temp_files(tmp_path: Path) -> None:
    save_result(7, "gpu-1", OCR, TIMINGS, directory=tmp_path)
    second = save_result(7, "gpu-2", OCR, TIMINGS, directory=tmp_path)
    assert json.loads(second.read_text())["worker"] == "gpu-2"
    assert [p.name for p in tmp_path.iterdir()] == ["7.json"]


def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "3.json"
    write_json_atomically(path, {"old": True})
    with pytest.raises(TypeError):
        write_json_atomically(path, {"new": object()})  # fails halfway through the dump
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["3.json"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "9.json"
    write_json_atomically(path, {"n": -1, "pad": "x" * 200_000})
    done = threading.Event()

    def rewrite() -> None:
        for n in range(40):
            write_json_atomically(path, {"n": n, "pad": "x" * 200_000})
        done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    while not done.is_set():
        assert len(json.loads(path.read_text())["pad"]) == 200_000
        reads += 1
    writer.join()
    assert reads > 0 and json.loads(path.read_text())["n"] == 39


def test_an_unwritable_folder_fails_naming_the_image(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(ResultError, match=r"image 5: cannot save the result to .*5\.json"):
        save_result(5, "w", OCR, TIMINGS, directory=blocker)
