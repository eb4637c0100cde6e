"""Research tools built on the library, never imported by it: the clipping x batch-size
``sweep``, ``signal_propagation`` plots, the ``benchmark`` harness and the ``flops`` counter."""
