import json

from patentgpt.data.shards import ShardSet
from patentgpt.data.tokenize import tokenize_jsonl


def test_tokenize_sets_aside_bad_records_and_decodes_back(tmp_path, ip_tokenizer_dir):
    from transformers import AutoTokenizer

    good = [
        {"title": "Battery pack", "abstract": "A battery pack (10) with LiFePO4 cells.", "claims": ["1. A pack."]},
        {"text": "专利法第二十二条规定了新颖性、创造性和实用性。"},
        {"text": "Claim construction  with   irregular spacing\n\tand tabs."},
    ]
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as fh:
        fh.write((json.dumps(good[0]) + "\n").encode())
        fh.write(b'{"text": "unterminated\n')
        fh.write(b'{"text": "bad \xff\xfe bytes"}\n')
        fh.write((json.dumps(good[1], ensure_ascii=False) + "\n").encode())
        fh.write(b'["not", "an", "object"]\n')
        fh.write(b'{"title": "", "text": "   "}\n')
        fh.write(b"\n")
        fh.write((json.dumps(good[2]) + "\n").encode())
    summary = tokenize_jsonl([str(src)], str(ip_tokenizer_dir), str(tmp_path / "shards"))
    assert summary["num_docs"] == 3
    assert summary["reject_reasons"] == {"malformed_json": 1, "undecodable_utf8": 1, "not_an_object": 1,
                                         "no_text": 1}
    rejects = [json.loads(ln) for ln in open(summary["rejects_file"])]
    assert [r["line"] for r in rejects] == [2, 3, 5, 6]
    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    shards = ShardSet(tmp_path / "shards")
    texts = [tok.decode(shards.doc(i).tolist()) for i in range(3)]
    assert texts[0].startswith("<|title|>Battery pack\n<|abstract|>A battery pack (10) with LiFePO4 cells.")
    assert texts[1] == good[1]["text"] and texts[2] == good[2]["text"]
