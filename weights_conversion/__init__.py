"""Convert torchvision ImageNet checkpoints to jaxviz params files (needs torch; optional extra).

    python -m weights_conversion vgg16                      # download (online) + convert
    python -m weights_conversion vgg16 --checkpoint vgg16-397923af.pth
"""

from weights_conversion.convert import convert_state_dict

__all__ = ["convert_state_dict"]
