"""lm-evaluation-harness model "bdh": lm_eval's own command line on local task files (multiple choice, rolling
perplexity, generation), checked against our model's numbers, `bdh eval` and `bdh generate`."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # everything below is local files
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from bdh import BDH, load_model  # noqa: E402
from bdh.baselines import GPT, GPTConfig  # noqa: E402
from bdh.cli import main as bdh_main  # noqa: E402
from bdh.generation import prefill_piece  # noqa: E402
from bdh.hf import lm_eval as bdh_lm_eval  # noqa: E402  (registers "bdh")
from bdh.tokenization import ByteTokenizer  # noqa: E402

from conftest import english_bytes, tiny_config, trained_tiny_gpt  # noqa: E402

MC = [
    {"question": "The capital of France is", "choices": [" Paris", " London", " Rome"], "answer": 0},
    {"question": "To be, or not to", "choices": [" be", " see", " xq"], "answer": 0},
    {"question": "ROMEO:", "choices": ["\nO Juliet", " zzz"], "answer": 0},
    {"question": "", "choices": ["the", "qqq"], "answer": 0},  # empty context: the prefix token
]
GEN = [{"prompt": "ROMEO:", "target": " x"}, {"prompt": "The king", "target": " y"}]
DOC = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds that "
       "lour'd upon our house in the deep bosom of the ocean buried. ") * 2 + "\n"  # one line


def task_files(root) -> None:
    """Task YAMLs and their local JSON data, in `root` (lm_eval --include_path)."""
    data = {"mc": MC, "ppl": [{"text": DOC}, {"text": "To be, or not to be: that is the question."}], "gen": GEN}
    for name, rows in data.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    (root / "bdh_mc.yaml").write_text(
        "task: bdh_mc\n" + common.format(path=root / "mc.jsonl") + 'output_type: multiple_choice\n'
        'doc_to_text: "{{question}}"\ndoc_to_target: answer\ndoc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n")
    (root / "bdh_ppl.yaml").write_text(
        "task: bdh_ppl\n" + common.format(path=root / "ppl.jsonl") + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (root / "bdh_gen.yaml").write_text(
        "task: bdh_gen\n" + common.format(path=root / "gen.jsonl") + "output_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["e"]\n  max_gen_toks: 24\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_tiny):
    root = tmp_path_factory.mktemp("lm_eval")
    (root / "tasks").mkdir()
    task_files(root / "tasks")
    trained_tiny.save_pretrained(root / "bdh", tokenizer=ByteTokenizer())
    trained_tiny_gpt().save_pretrained(root / "gpt", tokenizer=ByteTokenizer())
    # a corpus whose validation split (bdh.data.split_text: the last 10% of characters, from a line start) is
    # "\n" + DOC: `bdh eval` then scores DOC after a newline, as lm_eval scores a document after the prefix token
    n = 10 * (len(DOC) + 1)
    head = ("x" * 79 + "\n") * (n // 80 + 1)
    head = head[: n - len(DOC) - 2] + "\n"
    corpus = head + "\n" + DOC
    assert len(corpus) == n and corpus[round(0.9 * n) - 1 : round(0.9 * n) + 1] == "\n\n"
    (root / "corpus.txt").write_text(corpus)
    from bdh.data.corpora import resolve_corpus

    assert resolve_corpus(str(root / "corpus.txt")).val == "\n" + DOC
    return root


TASKS = ["bdh_mc", "bdh_ppl", "bdh_gen"]


def run_lm_eval(root, model_dir, out) -> dict:
    """lm_eval's command line (its cli_evaluate) with "bdh" registered, as `python -m bdh.hf.lm_eval` runs it.
    (About 20 s here: lm_eval's command line indexes its thousands of built-in task files first.)"""
    bdh_lm_eval.main(["--model", "bdh", "--model_args", f"pretrained={model_dir}", "--tasks", ",".join(TASKS),
                      "--include_path", str(root / "tasks"), "--output_path", str(out), "--log_samples",
                      "--device", "cpu"])
    [results] = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    samples = {}
    for task in TASKS:
        [f] = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
        samples[task] = [json.loads(line) for line in open(f)]
    return {"results": json.load(open(results))["results"], "samples": samples}


def run_simple_evaluate(root, model_dir) -> dict:
    """lm_eval.simple_evaluate (what the command line calls), with only our task files indexed."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
    res = simple_evaluate(model="bdh", model_args={"pretrained": str(model_dir)}, tasks=TASKS, task_manager=tm,
                          log_samples=True, device="cpu")
    return {"results": res["results"], "samples": res["samples"]}


def first(x):
    """The first number or string of a logged response (nested lists / tuples; the JSON files hold strings)."""
    while isinstance(x, (list, tuple)):
        x = x[0]
    return x


def logp(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one forward pass over the whole sequence (no state carried)."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids[:, :-1])[0][0].double(), -1)
    tgt = ids[0, 1:]
    return float(lp.gather(1, tgt[:, None])[len(context) - 1 :].sum())


@pytest.mark.parametrize("kind", ["bdh", "gpt"])
def test_lm_eval_on_local_tasks(setup, kind, tmp_path, capsys):
    """BDH through lm_eval's command line; the GPT baseline through simple_evaluate (the same evaluation)."""
    if kind == "bdh":
        got = run_lm_eval(setup, setup / kind, tmp_path / "out")
    else:
        got = run_simple_evaluate(setup, setup / kind)
    model = load_model(setup / kind)
    nl = ByteTokenizer().encode("\n")

    # multiple choice: every choice's log-likelihood is our model's, acc follows from them
    correct = []
    for s in sorted(got["samples"]["bdh_mc"], key=lambda s: s["doc_id"]):
        doc = MC[s["doc_id"]]
        ctx = list(doc["question"].encode()) or nl
        want = [logp(model, ctx, list((" " + c).encode())) for c in doc["choices"]]  # lm_eval's target_delimiter
        lls = [float(first(r)) for r in s["resps"]]
        assert lls == pytest.approx(want, rel=1e-4, abs=1e-4)
        correct.append(max(range(len(want)), key=want.__getitem__) == doc["answer"])
    assert got["results"]["bdh_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))

    # rolling perplexity with the state carried = `bdh eval --carry` on the same text ("\n" + DOC)
    assert bdh_main(["eval", "--model", str(setup / kind), "--data", str(setup / "corpus.txt"), "--batch-size", "1",
                     "--block-size", "64", "--carry", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["bytes"] == len(DOC)
    doc_ll = float(first([s for s in got["samples"]["bdh_ppl"] if s["doc"]["text"] == DOC][0]["resps"]))
    assert -doc_ll / len(DOC) == pytest.approx(ev["loss"], rel=1e-5)
    n_bytes = sum(len(s["doc"]["text"].encode()) for s in got["samples"]["bdh_ppl"])
    total_ll = sum(float(first(s["resps"])) for s in got["samples"]["bdh_ppl"])
    assert got["results"]["bdh_ppl"]["bits_per_byte,none"] == pytest.approx(-total_ll / n_bytes / 0.6931471805599453)

    # generation: bdh's greedy text, ended by the stop string
    for s in got["samples"]["bdh_gen"]:
        prompt = GEN[s["doc_id"]]["prompt"]
        want = model.generate(prompt, 24, temperature=0, stop=["e"])
        assert first(s["resps"]) == want


def test_loglikelihood_rolling_reads_a_long_document_once(setup):
    """O(T): windows of prefill_piece tokens with the state carried, each token read once."""
    lm = bdh_lm_eval.BDHLM(pretrained=str(setup / "bdh"))
    assert lm.carries and lm.max_length is None
    text = english_bytes(3000).numpy().tobytes().decode("utf-8", "ignore")
    calls = []
    prefill = lm.model.prefill
    lm.model.prefill = lambda x, state=None, **kw: (calls.append(x.shape[1]), prefill(x, state, **kw))[1]
    [ll] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    del lm.model.prefill
    T = len(text.encode())
    assert sum(calls) == T and max(calls) <= 512 and len(calls) == -(-T // 512)
    ids = [lm.prefix_token_id] + list(text.encode())
    assert ll == pytest.approx(logp(lm.model, ids[:1], ids[1:]), rel=1e-4)  # = one pass over the whole document


def test_learned_positions_use_disjoint_windows(tmp_path):
    torch.manual_seed(0)
    GPT(GPTConfig(n_layer=1, n_embd=16, n_head=2, positions="learned", block_size=32)).save_pretrained(tmp_path)
    lm = bdh_lm_eval.BDHLM(pretrained=str(tmp_path))
    assert not lm.carries and lm.max_length == 32
    text = "x" * 100
    [ll] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    # lm_eval's rolling windows: every token predicted once, from at most 32 tokens
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    want = sum(logp(lm.model, c, t) for c, t in map(make_disjoint_window, get_rolling_token_windows(
        list(text.encode()), lm.prefix_token_id, 32, 1)))
    assert ll == pytest.approx(want, rel=1e-4)


def test_generate_until_and_options(setup):
    lm = bdh_lm_eval.BDHLM(pretrained=str(setup / "bdh"))
    req = [Instance("generate_until", {}, ("To be", {"until": ["\n", "s"], "max_gen_toks": 10}), 0)]
    assert lm.generate_until(req) == [lm.model.generate("To be", 10, temperature=0, stop=["\n", "s"])]
    with pytest.raises(ValueError, match=r"unsupported generation option\(s\) \['num_beams'\]"):
        lm.generate_until([Instance("generate_until", {}, ("To be", {"num_beams": 2}), 0)])


def test_bad_model_args_and_vocabulary(setup, tmp_path):
    with pytest.raises(ValueError, match="--model_args foo: not options of model 'bdh'"):
        bdh_lm_eval.BDHLM(pretrained=str(setup / "bdh"), foo=1)
    with pytest.raises(ValueError, match="prefix_token_id=999: expected a token id in"):
        bdh_lm_eval.BDHLM(pretrained=str(setup / "bdh"), prefix_token_id=999)
    torch.manual_seed(0)
    BDH(tiny_config(vocab_size=300)).save_pretrained(tmp_path / "v300", tokenizer=ByteTokenizer())
    with pytest.raises(ValueError, match="tokenizer has 256 tokens but the model's vocab_size is 300"):
        bdh_lm_eval.BDHLM(pretrained=str(tmp_path / "v300"))
    BDH(tiny_config(vocab_size=50257)).save_pretrained(tmp_path / "gpt2_vocab")  # no tokenizer files: not bytes
    with pytest.raises(ValueError, match=r"holds no tokenizer files, and bytes \(256 tokens\) do not match the "
                                         "model's vocab_size 50257"):
        bdh_lm_eval.BDHLM(pretrained=str(tmp_path / "gpt2_vocab"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bdh_lm_eval.BDHLM(pretrained=str(tmp_path / "nope"))


@pytest.mark.slow
def test_python_m_command(setup, tmp_path):
    """The documented command, in a fresh process."""
    cmd = [sys.executable, "-m", "bdh.hf.lm_eval", "--model", "bdh", "--model_args", f"pretrained={setup / 'bdh'}",
           "--tasks", "bdh_mc", "--include_path", str(setup / "tasks"), "--output_path", str(tmp_path / "o")]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bdh_mc" in r.stdout and "acc" in r.stdout


def test_bare_lm_eval_command_with_remote_code(setup, tmp_path):
    """The plain `lm_eval` command, which cannot see the "bdh" model, still evaluates a model directory through
    transformers: `--model hf` with trust_remote_code (config.json's auto_map, the directory's modeling_bdh.py).
    No prefix_token_id is needed (issue 23: before, lm_eval failed with "'None' is not an instance of 'Sequence'"):
    the tokenizer's bos / eos token is "\\n", the "bdh" model's prefix token. Its multiple-choice accuracy and bits
    per byte equal the "bdh" model's (the documents fit one window); generate_until stops at `until` and at eos."""
    import shutil

    exe = shutil.which("lm_eval", path=os.path.dirname(sys.executable)) or shutil.which("lm_eval")
    assert exe, "the lm_eval console script is not installed"
    cmd = [exe, "--model", "hf", "--model_args", f"pretrained={setup / 'bdh'},trust_remote_code=True",
           "--tasks", ",".join(TASKS), "--include_path", str(setup / "tasks"), "--output_path", str(tmp_path / "o"),
           "--device", "cpu", "--log_samples"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    [f] = glob.glob(str(tmp_path / "o" / "**" / "results_*.json"), recursive=True)
    bare = json.load(open(f))["results"]
    ours = run_simple_evaluate(setup, setup / "bdh")["results"]
    assert bare["bdh_mc"]["acc,none"] == ours["bdh_mc"]["acc,none"]
    assert bare["bdh_ppl"]["bits_per_byte,none"] == pytest.approx(ours["bdh_ppl"]["bits_per_byte,none"], rel=1e-5)
    [g] = glob.glob(str(tmp_path / "o" / "**" / "samples_bdh_gen_*.jsonl"), recursive=True)
    model = load_model(setup / "bdh")
    for s in map(json.loads, open(g)):
        want = model.generate(GEN[s["doc_id"]]["prompt"], 24, temperature=0, stop=["e", "\n"])
        assert first(s["resps"]) == want


def long_document(n: int) -> str:
    """n bytes of English on one line, ending with "\\n" (ASCII: characters = bytes)."""
    text = english_bytes(4 * n).numpy().tobytes().decode("ascii", "ignore").replace("\n", " ")
    return " ".join(text.split())[: n - 1] + "\n"


def corpus_ending_with(root, doc: str):
    """A corpus file whose validation split (`bdh.data.split_text`: the last 10%, from a line start) is "\\n" + doc."""
    from bdh.data.corpora import resolve_corpus

    n = 10 * (len(doc) + 1)
    head = ("x" * 79 + "\n") * (n // 80 + 1)
    path = root / "corpus_long.txt"
    path.write_text(head[: n - len(doc) - 2] + "\n" + "\n" + doc)
    assert resolve_corpus(str(path)).val == "\n" + doc
    return path


def test_rolling_loglikelihood_is_bdh_eval_of_the_document_after_the_prefix(setup, tmp_path, capsys):
    """The stated relation (README), on a document of several prefill pieces (512 tokens) and many `bdh eval`
    blocks (64): lm_eval's rolling log-likelihood of a document D is `bdh eval --carry --batch-size 1` of the text
    "\\n" + D (bdh eval scores every token of its text but the first: here the len(D) tokens of D, each after
    the same context as lm_eval's). Of D alone it would score one token fewer, and without the prefix token."""
    doc = long_document(1500)
    lm = bdh_lm_eval.BDHLM(pretrained=str(setup / "bdh"))
    assert lm.prefix_token_id == ByteTokenizer().encode("\n")[0]
    [ll] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (doc,), 0)])

    def bdh_eval(path) -> dict:
        assert bdh_main(["eval", "--model", str(setup / "bdh"), "--data", str(path), "--batch-size", "1",
                         "--block-size", "64", "--carry", "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    ev = bdh_eval(corpus_ending_with(tmp_path, doc))
    assert -(-len(doc) // prefill_piece(lm.model)) == 3 and -(-len(doc) // 64) == 24  # pieces and blocks
    assert (ev["tokens"], ev["bytes"]) == (len(doc), len(doc))
    assert -ll == pytest.approx(ev["loss"] * ev["tokens"], rel=1e-5)  # total nats: equal
    assert -ll / len(doc) / math.log(2) == pytest.approx(ev["bpb"], rel=1e-5)  # and so bits per byte
