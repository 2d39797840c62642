"""txwatch's runtime: the formats (events), the feature engine (features), the student
(scoring), the pipeline core and its ports (core), the adapters to Redis and Kafka
(adapters), the runners (runners) and the operator tools (tools).

Nothing here imports ``training`` or ``txwatch``; the core, the features and the formats
import no Kafka, Redis or faust client (``tests/test_layout.py``).
"""
