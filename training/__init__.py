"""txwatch offline side: simulator, dataset building, teacher, distillation, evaluation."""
