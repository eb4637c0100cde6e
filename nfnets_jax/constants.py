"""Numbers that several rooms share, defined once below all of them.

ImageNet's per-channel pixel mean and standard deviation in [0, 1] units (as timm states them;
multiply by 255 for pixel values): the models' records, the data pipeline and every weights
format read them from here.
"""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
