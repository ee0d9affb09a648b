"""The trainable parts of M2HVideo (paper Sec. III-C), one module each."""
