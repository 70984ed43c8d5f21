import pytest

from autolite.data import corpus, load_texts
from autolite.errors import DataError


def test_corpus_splits_are_disjoint_and_real():
    whole, calib, heldout = corpus("all"), corpus("calib"), corpus("heldout")
    assert len(whole) >= 300
    assert len(calib) + len(heldout) == len(whole)
    assert not set(calib.texts) & set(heldout.texts)
    assert len(set(whole.texts)) == len(whole)


def test_txt_csv_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b.csv").write_text("text,label\nhello,1\nworld,0\n")
    (tmp_path / "c.jsonl").write_text('{"text": "x", "label": 1}\n{"text": "y", "label": 0}\n')
    assert load_texts(tmp_path / "a.txt").texts == ["one", "two"]
    csv_data = load_texts(tmp_path / "b.csv")
    assert csv_data.texts == ["hello", "world"] and csv_data.labels == [1, 0]
    assert load_texts(tmp_path / "c.jsonl").labels == [1, 0]


def test_csv_without_labels_has_none(tmp_path):
    (tmp_path / "b.csv").write_text("text\nhello\n")
    assert load_texts(tmp_path / "b.csv").labels is None


@pytest.mark.parametrize("name,content,message", [
    ("empty.txt", "\n\n", "holds no text"),
    ("nocol.csv", "sentence,label\nhi,1\n", "needs a 'text' column"),
    ("bad.jsonl", '{"text": "a"}\nnot json\n', "bad.jsonl:2 is not valid JSON"),
    ("labels.csv", "text,label\nhi,positive\n", "neither class ids nor names"),
    ("data.parquet", "x", "must be .txt, .csv or .jsonl"),
])
def test_bad_data_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_texts(path)


def test_missing_and_non_utf8(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_texts(tmp_path / "latin.txt")


def test_label_names_map_through_label2id(tmp_path):
    (tmp_path / "named.csv").write_text("text,label\ngood,Positive\nbad,negative\n")
    assert load_texts(tmp_path / "named.csv", label2id={"negative": 0, "positive": 1}).labels == [1, 0]
    with pytest.raises(DataError, match=r"\['Positive'\] are neither class ids nor names of the model's classes "
                                        r"\(LABEL_0, negative\)"):
        load_texts(tmp_path / "named.csv", label2id={"LABEL_0": 0, "negative": 1})
