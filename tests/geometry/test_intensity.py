import pytest
import torch

from service.errors import InvalidInputError
from service.geometry import scale_intensity


def test_clips_then_scales_to_unit_range():
    image = torch.tensor([-1000.0, -250.0, 0.0, 125.0, 250.0, 3000.0])
    out = scale_intensity(image, (-250.0, 250.0))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))
    assert image[0] == -1000.0  # not in place by default


def test_in_place_reuses_the_tensor_and_integers_become_float():
    image = torch.linspace(-500, 500, 11)
    assert scale_intensity(image, inplace=True) is image
    assert image.min() == 0.0 and image.max() == 1.0
    out = scale_intensity(torch.tensor([-300, 0, 300], dtype=torch.int16))
    assert out.dtype == torch.float32 and out.tolist() == [0.0, 0.5, 1.0]


def test_matches_monai_scale_intensity_range():
    transforms = pytest.importorskip("monai.transforms")
    image = torch.randn(4, 5, 6) * 600
    expected = transforms.ScaleIntensityRange(a_min=-250, a_max=250, b_min=0.0, b_max=1.0, clip=True)(image)
    torch.testing.assert_close(scale_intensity(image), torch.as_tensor(expected), atol=1e-7, rtol=0)


def test_bad_window_is_rejected():
    with pytest.raises(InvalidInputError, match="hu_window"):
        scale_intensity(torch.zeros(3), (250.0, -250.0))
