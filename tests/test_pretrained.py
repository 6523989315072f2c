"""Weight import: safetensors/pth readers, key mapping, and agreement with a PyTorch ResNet."""

import json
import struct

import jax
import numpy as np
import pytest

from ntkdyn.models.pretrained import (
    load_pretrained_resnet,
    read_safetensors,
    read_torch_state_dict,
    torch_resnet_to_flax,
    write_safetensors,
)
from ntkdyn.models.resnet import init_resnet, resnet18, resnet50


def zero_variables(model, size=32):
    """The model's variables as zeros, from shapes only (no compilation)."""
    shapes = jax.eval_shape(lambda: init_resnet(model, jax.random.PRNGKey(0), size))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def torchvision_state_dict(
    arch: str, rng: np.random.Generator, width: int = 64, classes: int = 1000
) -> dict:
    """A random state dict with torchvision's exact key names and shapes (written from its layout)."""
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = rng.normal(
            0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)
        ).astype(np.float32)

    def bn(name, c):
        sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        sd[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    bottleneck = arch == "resnet50"
    sizes = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    exp = 4 if bottleneck else 1
    cin = width
    for i, n in enumerate(sizes):
        c = width * 2**i
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            if bottleneck:
                conv(f"{p}.conv1", c, cin, 1), bn(f"{p}.bn1", c)
                conv(f"{p}.conv2", c, c, 3), bn(f"{p}.bn2", c)
                conv(f"{p}.conv3", 4 * c, c, 1), bn(f"{p}.bn3", 4 * c)
            else:
                conv(f"{p}.conv1", c, cin, 3), bn(f"{p}.bn1", c)
                conv(f"{p}.conv2", c, c, 3), bn(f"{p}.bn2", c)
            if j == 0 and (i > 0 or cin != c * exp):
                conv(f"{p}.downsample.0", c * exp, cin, 1)
                bn(f"{p}.downsample.1", c * exp)
            cin = c * exp
    sd["fc.weight"] = rng.normal(0, 0.02, (classes, cin)).astype(np.float32)
    sd["fc.bias"] = rng.normal(0, 0.02, classes).astype(np.float32)
    return sd


def test_safetensors_roundtrip_and_format(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.normal(size=(3, 4)).astype(np.float32),
        "b": np.arange(5, dtype=np.int64),
        "c": np.array([True, False]),
    }
    path = write_safetensors(tmp_path / "x.safetensors", tensors, metadata={"format": "pt"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert n % 8 == 0 and header["a"] == {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}
    assert header["__metadata__"] == {"format": "pt"}
    back = read_safetensors(path)
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype


def test_safetensors_bf16_and_errors(tmp_path):
    vals = np.array([1.0, -2.5, 0.15625], np.float32)
    bf = (vals.view(np.uint32) >> 16).astype("<u2")
    head = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + bf.tobytes())
    np.testing.assert_array_equal(read_safetensors(tmp_path / "bf.safetensors")["w"], vals)
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(ValueError, match="bad.safetensors"):
        read_safetensors(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_safetensors(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("arch,factory", [("resnet18", resnet18), ("resnet50", resnet50)])
def test_real_key_names_cover_the_model_exactly(arch, factory, tmp_path):
    """Every tensor of the real layout lands on a model leaf of the same shape, and vice versa."""
    sd = torchvision_state_dict(arch, np.random.default_rng(1))
    n_tensors = sum(1 for k in sd if not k.endswith("num_batches_tracked"))
    assert (
        len(sd) == {"resnet18": 122, "resnet50": 320}[arch]
    )  # len(torchvision.models.<arch>().state_dict())
    variables = zero_variables(factory(num_outputs=1000))
    path = write_safetensors(tmp_path / f"{arch}.safetensors", sd)
    new = load_pretrained_resnet(variables, path, include_head=True)
    conv = torch_resnet_to_flax(sd)
    assert len(conv) == n_tensors
    np.testing.assert_array_equal(
        new["params"]["layer1_0"]["conv1"]["kernel"],
        sd["layer1.0.conv1.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        new["batch_stats"]["layer2_0"]["downsample_1"]["var"],
        sd["layer2.0.downsample.1.running_var"],
    )
    np.testing.assert_array_equal(new["params"]["fc"]["kernel"], sd["fc.weight"].T)


def test_head_skipped_by_default_and_mismatch_errors(tmp_path):
    sd = torchvision_state_dict("resnet18", np.random.default_rng(2))
    variables = zero_variables(resnet18())
    variables["params"]["fc"]["kernel"] = np.full((512, 1), 0.5, np.float32)
    new = load_pretrained_resnet(variables, sd)  # 1000-class head ignored, ours kept
    np.testing.assert_array_equal(new["params"]["fc"]["kernel"], 0.5)
    np.testing.assert_array_equal(new["params"]["bn1"]["scale"], sd["bn1.weight"])
    with pytest.raises(ValueError, match="missing"):
        load_pretrained_resnet(zero_variables(resnet50()), sd)
    with pytest.raises(ValueError, match="shape"):
        load_pretrained_resnet(zero_variables(resnet18(width=32)), sd)
    with pytest.raises(ValueError, match="not part of"):
        torch_resnet_to_flax({"encoder.blocks.0.weight": np.zeros(3)})


def _torch_resnet(arch, width=64, classes=1000):
    """A torchvision-equivalent ResNet in plain torch.nn, with torchvision's module names."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, c, stride, down):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU()
            self.downsample = (
                nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))
                if down
                else None
            )

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(y + (self.downsample(x) if self.downsample is not None else x))

    class Bottle(nn.Module):
        expansion = 4

        def __init__(self, cin, c, stride, down):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(4 * c)
            self.relu = nn.ReLU()
            self.downsample = (
                nn.Sequential(nn.Conv2d(cin, 4 * c, 1, stride, bias=False), nn.BatchNorm2d(4 * c))
                if down
                else None
            )

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (self.downsample(x) if self.downsample is not None else x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            block, sizes = (Bottle, (3, 4, 6, 3)) if arch == "resnet50" else (Basic, (2, 2, 2, 2))
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = width
            for i, n in enumerate(sizes):
                c, blocks = width * 2**i, []
                for j in range(n):
                    stride = 2 if i > 0 and j == 0 else 1
                    blocks.append(
                        block(
                            cin, c, stride, j == 0 and (stride != 1 or cin != c * block.expansion)
                        )
                    )
                    cin = c * block.expansion
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return torch, Net()


@pytest.mark.parametrize(
    "arch,factory,width,size", [("resnet18", resnet18, 16, 48), ("resnet50", resnet50, 8, 40)]
)
def test_matches_pytorch_resnet_output(arch, factory, width, size, tmp_path):
    torch, net = _torch_resnet(arch, width=width, classes=10)
    sd = torchvision_state_dict(arch, np.random.default_rng(3), width=width, classes=10)
    assert set(net.state_dict()) == set(sd)  # the reference has torchvision's key names
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    net.eval()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    x = np.random.default_rng(4).normal(size=(3, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = factory(width=width, num_outputs=10)
    variables = zero_variables(model, size)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    for reader in (dict(use_torch=True), dict(use_torch=False)):
        state = read_torch_state_dict(tmp_path / "w.pth", **reader)
        new = load_pretrained_resnet(variables, state, include_head=True)
        out = apply(new, x, train=False)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    # train mode: batch statistics in the forward pass, as torch's train()
    net.train()
    with torch.no_grad():
        ref_train = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out_train, _ = apply(new, x, train=True, mutable=("batch_stats",))
    np.testing.assert_allclose(out_train, ref_train, rtol=1e-3, atol=1e-3)


def test_torch_free_reader_matches_torch_load(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {
        "a.weight": torch.randn(4, 3, 2, 2),
        "b": torch.arange(6, dtype=torch.int64).reshape(2, 3).t(),
        "h": torch.randn(5).half(),
        "n": torch.tensor(3),
    }
    torch.save({"state_dict": sd}, tmp_path / "ck.pth")
    free = read_torch_state_dict(tmp_path / "ck.pth", use_torch=False)
    for k, v in sd.items():
        np.testing.assert_array_equal(free[k], v.numpy())
        assert free[k].dtype == v.numpy().dtype
    torch.save(
        {"opt": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)}, tmp_path / "obj.pth"
    )
    with pytest.raises(ValueError, match="obj.pth"):
        read_torch_state_dict(tmp_path / "obj.pth", use_torch=False)
