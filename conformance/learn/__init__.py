"""Model learning (`mynacard learn`): AALpy learns a Mealy machine of one application over
an abstract alphabet, the reference model gives the expected one through the same mapper,
and the two are compared (docs/learning.md).

- `alphabet`: the abstract letters of an application and the APDUs each one sends;
- `mapper`: letters to APDUs and answers to abstract outputs, over a card or the model;
- `learning`: AALpy's KV algorithm with its query cache, and what it cost;
- `diff`: states and transitions that differ, each with a shortest input sequence;
- `render`: DOT, Graphviz pictures and the side-by-side HTML page;
- `cli`: the `learn` subcommand.
"""
