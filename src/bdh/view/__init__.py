"""`bdh view`: an interactive local viewer of BDH's neurons, synapses and state (and a GPT's per-token loss
and attention), a web page served by FastAPI + uvicorn on 127.0.0.1, or exported as one static page.

| module   | what                                                                                    |
|----------|-----------------------------------------------------------------------------------------|
| `data`   | the computations, plain Python returning JSON-able dicts (text, neuron, synapse, state) |
| `index`  | the neuron index: top contexts and histograms over a validation corpus, cached by hash  |
| `app`    | the FastAPI app: a thin JSON layer over `data`, and the page                            |
| `cli`    | `bdh view --model DIR [--export page.html --text ...]`                                  |
| `static` | index.html, view.js, view.css and Apache ECharts 6.1.0 (echarts.min.js, Apache-2.0)     |

`data` and `index` need only torch; `app` imports fastapi when called (`pip install bdh[view]`).
"""
