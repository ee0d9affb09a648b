"""ComfyUI nodes of the M2HVideo pack.

- spec.py: the node table (ids, inputs in widget order, outputs, tooltips) — no heavy imports;
- logic.py: what the nodes do, as functions on tensors (tested without ComfyUI);
- files.py: model folders and dropdown lists (ComfyUI's folder_paths, imported lazily);
- comfy_nodes.py: the V3 node classes (imported only inside ComfyUI).
"""
