"""Networks: the VNet student that returns logits and its four decoder features."""

from micd.nets.vnet import VNet, NetworkConfig, build_network, init_weights

__all__ = ["VNet", "NetworkConfig", "build_network", "init_weights"]
