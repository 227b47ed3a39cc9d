import subprocess

import pydoc_data.topics
import pytest
import torch

from bdh import BDH, BDHConfig


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a server started by a test: SIGTERM, then SIGKILL when it has not exited after `timeout` s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def tiny_config(**kw) -> BDHConfig:
    base = dict(n_layer=2, n_embd=32, n_head=4, mlp_internal_dim_multiplier=8, vocab_size=256, dropout=0.0, chunk_size=16)
    base.update(kw)
    return BDHConfig(**base)


def english_bytes(n: int = 20000) -> torch.Tensor:
    text = "".join(pydoc_data.topics.topics.values())[:n]
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def trained_tiny_gpt():
    """A GPT baseline of about the tiny BDH's size, briefly trained (20 steps of 8 x 32 bytes), in eval mode."""
    from bdh.baselines.gpt import GPT, GPTConfig

    torch.manual_seed(1)
    return train_briefly(GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=256, block_size=64)), steps=20, T=32)


def train_briefly(model: BDH, steps: int = 40, T: int = 48, B: int = 8, seed: int = 0) -> BDH:
    """A few AdamW steps on English bytes, so the weights are not random (sparser, structured activations)."""
    g = torch.Generator().manual_seed(seed)
    data = english_bytes()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(data) - T - 1, (B,), generator=g)
        x = torch.stack([data[j : j + T] for j in i.tolist()])
        y = torch.stack([data[j + 1 : j + T + 1] for j in i.tolist()])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP barrier stalls (~100x when oversubscribed)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def trained_tiny() -> BDH:
    torch.manual_seed(0)
    return train_briefly(BDH(tiny_config()))
