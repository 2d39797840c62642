# txwatch image: the CLI with every dependency; `txwatch --help` lists the commands.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY training ./training
COPY txwatch ./txwatch
COPY export ./export
COPY workbench ./workbench
COPY lifecycle ./lifecycle
RUN pip install --no-cache-dir . && useradd --create-home txwatch
USER txwatch
ENTRYPOINT ["txwatch"]
CMD ["--help"]
