"""Small backbone settings shared by the CPU-sized shapes configs (FCN, DeepLab, context module).

The paper networks (VGG-16 at width 64 with 4096-channel fc6/fc7, ResNet-50/101 at width 64) are
the families' defaults; these shrink them so a 128 px shapes experiment trains on a 2-core CPU.
"""

# Median-frequency class weights of the shapes train split (background is 86% of the pixels), as
# printed by jaxvision.data.builder.median_frequency_weights(shapes_source("train")[0], 6); the same
# as configs/unet_shapes.py.
SHAPES_CLASS_WEIGHTS = (0.064, 0.649, 0.999, 1.537, 1.494, 1.001)
# Their square roots: a milder balancing. In 300-step runs it gave the same FCN-8s mIoU as the full
# weights (0.255 vs 0.257) and better DeepLab (0.218 vs 0.192) and context-net (0.197 vs 0.162,
# with aux_frontend) results, with fewer false positives (pixel accuracy 0.86-0.87 vs 0.76-0.82).
SHAPES_SQRT_CLASS_WEIGHTS = (0.253, 0.806, 1.0, 1.24, 1.222, 1.0)

# VGG-16 at 1/8 width (8, 16, 32, 64, 64 channels) with 64-channel fc6/fc7 and BatchNorm
# (vgg16_bn; a plain 15-layer VGG does not train from scratch in a few hundred steps).
TINY_VGG16 = dict(width=8, fc_features=64, norm="batch")

# ResNet-18 at 1/8 width (8, 16, 32, 64 channels).
TINY_RESNET18 = dict(backbone="resnet18", width=8)
