"""Swin-X Seg: Swin encoder + UNETR-style convolutional decoder (the published ``SMIT_3D_Seg_mini``)."""

from torch import Tensor, nn

from model_export.config import INPUT_MULTIPLE, SwinXSegConfig
from model_export.network.blocks import BasicBlock, LayerWrapper, OutBlock, ReduceBlock, UpBlock
from model_export.network.swin import SwinEncoder


class SwinXSeg(nn.Module):
    """The segmentation network, with exactly the published state_dict keys, shapes and dtypes.

    Input ``(B, in_channels, X, Y, Z)`` float, each side a multiple of 32; output logits
    ``(B, out_channels, X, Y, Z)``. The bottleneck grid ``(X/32, Y/32, Z/32)`` follows the input.
    """

    def __init__(self, config: SwinXSegConfig) -> None:
        super().__init__()
        self.config = config
        # An attribute, not the global: TorchScript reads module attributes, not Python globals.
        self.input_multiple = INPUT_MULTIPLE
        f = config.feature_size
        self.transformer = SwinEncoder(config)
        self.encoder0 = LayerWrapper(BasicBlock(config.in_channels, f))
        self.encoder1 = LayerWrapper(ReduceBlock(config.stage_dim(0), f))
        self.encoder2 = LayerWrapper(ReduceBlock(config.stage_dim(1), f))
        self.encoder3 = LayerWrapper(ReduceBlock(config.stage_dim(2), f))
        self.encoder4 = LayerWrapper(ReduceBlock(config.stage_dim(3), f))
        self.encoder10 = LayerWrapper(ReduceBlock(config.bottleneck_dim, f))
        # Declared from the deepest up, as published, so the state_dict order matches.
        self.decoder5 = UpBlock(f)
        self.decoder4 = UpBlock(f)
        self.decoder3 = UpBlock(f)
        self.decoder2 = UpBlock(f)
        self.decoder1 = UpBlock(f)
        self.out = OutBlock(f, config.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, X, Y, Z) -> (B, classes, X, Y, Z)`` logits."""
        m = self.input_multiple
        if x.size(2) % m != 0 or x.size(3) % m != 0 or x.size(4) % m != 0:
            raise ValueError("Swin-X Seg needs every spatial side to be a multiple of 32")
        bottleneck, stages = self.transformer(x)
        d4 = self.decoder5(self.encoder10(bottleneck), self.encoder4(stages[3]))
        d3 = self.decoder4(d4, self.encoder3(stages[2]))
        d2 = self.decoder3(d3, self.encoder2(stages[1]))
        d1 = self.decoder2(d2, self.encoder1(stages[0]))
        return self.out(self.decoder1(d1, self.encoder0(x)))
