"""Stand-in of comfy.latent_formats: SD-1.5's latent format (scale factor, latent-to-RGB preview factors)."""


class LatentFormat:
    scale_factor = 1.0
    latent_channels = 4
    latent_rgb_factors = None


class SD15(LatentFormat):
    def __init__(self, scale_factor=0.18215):
        self.scale_factor = scale_factor
        self.latent_rgb_factors = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                                   [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
