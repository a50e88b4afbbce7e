import pytest

from helper import paths


def test_artifact_dir_starts_empty_and_lives_under_artifacts(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ARTIFACTS_DIR", tmp_path / "artifacts")
    folder = paths.artifact_dir("lesson")
    (folder / "old.pt").write_bytes(b"x")
    assert paths.artifact_dir("lesson", clean=False) == folder and (folder / "old.pt").exists()
    assert list(paths.artifact_dir("lesson").iterdir()) == []  # clean=True: re-runnable from the top
    assert folder == tmp_path / "artifacts" / "lesson"


@pytest.mark.parametrize("bad", ["", "../escape", "a/b"])
def test_artifact_dir_refuses_paths(bad):
    with pytest.raises(ValueError, match="plain folder name"):
        paths.artifact_dir(bad)


def test_display_path_is_relative_to_the_repository(tmp_path):
    assert paths.display_path(paths.DATA_DIR / "manifest.json") == "data/manifest.json"
    assert paths.display_path(tmp_path / "x.pt") == "x.pt"  # outside: the name only
    # for error messages: the full path outside, as given (a symlink is not followed)
    link = tmp_path / "link.pt"
    link.symlink_to(paths.DATA_DIR / "manifest.json")
    assert paths.display_path(link, full_outside=True) == str(link)
    assert paths.display_path(paths.DATA_DIR / "manifest.json", full_outside=True) == "data/manifest.json"


def test_repo_root_holds_the_course():
    assert (paths.REPO_ROOT / "notebooks").is_dir() and (paths.REPO_ROOT / "helper").is_dir()
