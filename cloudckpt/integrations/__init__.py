"""Integrations of cloudckpt with the checkpoint APIs of training frameworks
(one module per framework, each imported only when the program asks for it)."""
