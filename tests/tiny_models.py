"""Small test models: a torchvision-structured ResNet and the same network in the original protocol."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


def tiny_resnet(bottleneck: bool = False, num_classes: int = 10) -> ResNet:
    """One block per stage: 64-128-256-512 channels (BasicBlock) or 4x that (Bottleneck)."""
    return ResNet(Bottleneck if bottleneck else BasicBlock, [1, 1, 1, 1], num_classes=num_classes)


class ProtocolResNet(ResNet):
    """torchvision's ResNet plus the original MGD protocol, written out by hand (no hooks)."""

    def extract_feature(self, x, preReLU=False):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer[:-1]:
                x = block(x)
            last = layer[-1]
            identity = x if last.downsample is None else last.downsample(x)
            out = F.relu(last.bn1(last.conv1(x)))
            if isinstance(last, Bottleneck):
                out = F.relu(last.bn2(last.conv2(out)))
                out = last.bn3(last.conv3(out))
            else:
                out = last.bn2(last.conv2(out))
            pre = out + identity
            feats.append(pre)
            x = F.relu(pre)
        out = self.fc(torch.flatten(self.avgpool(x), 1))
        if not preReLU:
            feats = [F.relu(f) for f in feats]
        return feats, out

    def get_bn_before_relu(self):
        name = "bn3" if isinstance(self.layer1[0], Bottleneck) else "bn2"
        return [getattr(layer[-1], name) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def get_channel_num(self):
        return [bn.num_features for bn in self.get_bn_before_relu()]


def protocol_copy(model: ResNet) -> ProtocolResNet:
    block = type(model.layer1[0])
    copy = ProtocolResNet(block, [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)],
                          num_classes=model.fc.out_features)
    copy.load_state_dict(model.state_dict())
    return copy


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial affine parameters and running stats (as a trained network has)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model
