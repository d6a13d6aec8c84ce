"""The miniature world: coloured shapes captioned in English, Chinese and Russian, a tiny English
teacher, a judge, and what runs on them (``train_adapter.py --demo``, the world proof).

The trainer never imports this package; it imports the trainer, as a user's script would."""
