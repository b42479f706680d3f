r"""Answer every row of a Parquet dataset with a packaged flavorkit model, on a Spark cluster.

Run it with ``spark-submit`` (docs/scaling-out.md, "On a real cluster")::

    MLFLOW_TRACKING_URI=http://mlflow.internal:5000 spark-submit --master spark://spark-master:7077 \
        --conf spark.pyspark.python=/opt/flavorkit-env/bin/python \
        examples/spark/generate.py models:/smollm2-chat@champion s3a://bucket/conversations/ s3a://bucket/answers/

The input has one column per request field the model's signature knows: ``messages``
(``array<struct<role:string,content:string>>``) for a chat model or ``prompt`` (string) for a
text-generation model, and optionally ``max_tokens``, ``temperature``, ``stop``, ``top_p``, ...
Every other column (an ``id``, say) is carried through to the output, which gets an ``answer``
column: the answer text (``--output text``, the default) or the whole chat completion struct
(``--output response``).

The model runs through MLflow's own ``mlflow.pyfunc.spark_udf``. The driver resolves the URI
(an alias through the tracking server named by ``MLFLOW_TRACKING_URI``) *before* Spark starts, so a
wrong URI or alias fails at once, and downloads the model once; Spark ships it to the executors.
``--check-rows`` uses ``flavorkit.spark.spark_udf`` instead, which validates every row with
flavorkit's request rules first and names a bad row by partition and position; it needs
``pip install flavorkit`` on the driver and the executors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

#: MLflow's limit on one scoring-server request (one Arrow batch) with ``uv``/``virtualenv``: 60 s by default.
SCORING_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: model URI, input and output paths, and options."""
    parser = argparse.ArgumentParser(
        prog="generate.py", description="Answer every row of a Parquet dataset with a packaged flavorkit model."
    )
    parser.add_argument("model_uri", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a path")
    parser.add_argument("source", help="input Parquet path (a file or a folder)")
    parser.add_argument("target", help="output Parquet folder (replaced if it exists)")
    parser.add_argument(
        "--output",
        choices=("text", "response"),
        default="text",
        help="'text': the answer text (default); 'response': the chat completion struct",
    )
    parser.add_argument(
        "--env-manager",
        choices=("local", "uv", "virtualenv"),
        default="local",
        help="'local' (default): the executors' Python has the model's requirements; "
        "'uv'/'virtualenv': MLflow builds them on each executor",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=0,
        help="repartition the input into this many tasks (default: the input's own partitions, "
        "or one per task slot if that is more)",
    )
    parser.add_argument(
        "--check-rows",
        action="store_true",
        help="use flavorkit.spark.spark_udf: bad rows are named by partition and row (needs flavorkit installed)",
    )
    args = parser.parse_args(argv)
    if args.partitions < 0:
        parser.error(f"argument --partitions: must be 1 or more (0: the default), got {args.partitions}")
    return args


def resolve_model(uri: str) -> tuple[str, Any]:
    """The URI pinned to a version, and the model's MLflow metadata (``ModelInfo``).

    An alias (``models:/NAME@ALIAS``) is resolved once, here, to ``models:/NAME/VERSION``, which
    the job then uses: moving the alias while the job starts cannot give it another version.
    Raises ``SystemExit(2)`` naming the URI if it does not resolve.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    pinned = uri
    try:
        if uri.startswith("models:/") and "@" in uri:
            name, alias = uri[len("models:/") :].rsplit("@", 1)
            version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
            pinned = f"models:/{name}/{version}"
        return pinned, mlflow.models.get_model_info(pinned)
    except (MlflowException, OSError) as exc:
        print(f"generate.py: error: model {uri!r} cannot be loaded: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def request_fields(info: Any) -> list[str]:
    """The request fields of the model's input signature, in its order."""
    if info.signature is None:
        print(f"generate.py: error: model {info.model_uri!r} has no input signature", file=sys.stderr)
        raise SystemExit(2)
    return [str(name) for name in info.signature.inputs.input_names()]


def main(argv: list[str] | None = None) -> int:
    """Run the job: read, answer every row, write; print what was done."""
    args = parse_args(argv)
    model_uri, info = resolve_model(args.model_uri)  # before Spark starts: a wrong alias costs no cluster time
    fields = request_fields(info)

    import mlflow
    from pyspark.errors import PythonException
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.appName("flavorkit-generate").getOrCreate()
    try:
        df = spark.read.parquet(args.source)
        given = [name for name in fields if name in df.columns]
        required = [name for name in ("messages", "prompt") if name in fields]
        missing = [name for name in required if name not in df.columns]
        if missing:
            print(
                f"generate.py: error: input {args.source!r} has no column {missing[0]!r} "
                f"(the model's request fields: {', '.join(fields)}; the input's columns: {', '.join(df.columns)})",
                file=sys.stderr,
            )
            return 2
        if "answer" in df.columns:
            print(f"generate.py: error: input {args.source!r} already has a column 'answer'", file=sys.stderr)
            return 2
        # A large input keeps its partitions (no shuffle); a small one is spread over the task slots.
        # defaultParallelism counts the executors' cores registered so far (at least 2), or is
        # spark.default.parallelism when set.
        slots = spark.sparkContext.defaultParallelism // int(spark.conf.get("spark.task.cpus", "1") or "1")
        partitions = args.partitions or max(df.rdd.getNumPartitions(), slots, 1)
        if partitions != df.rdd.getNumPartitions():
            df = df.repartition(partitions)

        if args.check_rows:
            from flavorkit.spark import spark_udf

            helper = spark_udf(spark, model_uri, output=args.output, env_manager=args.env_manager)
            answer = helper(*given)
        else:
            # The plain MLflow API: the request is one struct, whose fields MLflow matches by name.
            # With uv/virtualenv each task sends each Arrow batch to a scoring server as one request:
            # give it an hour (or this process's MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT), not 60 s.
            extra_env = None
            if args.env_manager != "local":
                extra_env = {SCORING_TIMEOUT_ENV: os.environ.get(SCORING_TIMEOUT_ENV, "3600")}
            udf = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager=args.env_manager, extra_env=extra_env)
            answer = udf(F.struct(*given))
            outputs = info.signature.outputs.input_names() if info.signature.outputs else []
            if args.output == "text" and "choices" in outputs:
                answer = answer["choices"][0]["message"]["content"]

        started = time.monotonic()
        try:
            df.withColumn("answer", answer).write.mode("overwrite").parquet(args.target)
        except PythonException as exc:  # the model or the row check failed in a task: show its error, not ours
            print(f"generate.py: error: the job failed in a Spark task: {exc}", file=sys.stderr)
            return 1
        seconds = time.monotonic() - started
        print(
            f"generate.py: answered {args.source} with {args.model_uri} ({model_uri}) into {args.target} "
            f"({partitions} partitions, request fields {', '.join(given)}) in {seconds:.1f} s"
        )
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
