# The example from NeMo Curator's "Custom Embedding Stages" how-to, verbatim except for the two
# import lines (nemo_curator -> curator_cli) and a real body for load_my_model.
from dataclasses import dataclass
import numpy as np
import torch
from curator_cli.stages.base import ProcessingStage
from curator_cli.tasks import ImageBatch

@dataclass
class MyCustomEmbeddingStage(ProcessingStage[ImageBatch, ImageBatch]):
    model_path: str
    batch_size: int = 32
    num_gpus_per_worker: float = 0.25
    _name: str = "my_custom_embedding"

    def setup(self, worker_metadata=None):
        # Load your custom model
        self.model = self.load_my_model(self.model_path)
        
    def load_my_model(self, model_path):
        # A linear projection of a 16 x 16 thumbnail, weights saved by the test with torch.save.
        state = torch.load(model_path, map_location="cpu")
        projection = torch.nn.Linear(16 * 16 * 3, state["weight"].shape[0], bias=False)
        projection.load_state_dict(state)

        def model(images):
            thumbs = [
                torch.nn.functional.interpolate(
                    torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0,
                    size=(16, 16), mode="area",
                )
                for img in images
            ]
            with torch.no_grad():
                return projection(torch.cat(thumbs).flatten(1)).numpy()

        return model
        
    def process(self, task: ImageBatch) -> ImageBatch:
        # Process images in batches
        for i in range(0, len(task.data), self.batch_size):
            batch = task.data[i:i + self.batch_size]
            
            # Extract image data
            images = [img.image_data for img in batch]
            
            # Generate embeddings using your model
            embeddings = self.model(images)
            
            # Store embeddings in ImageObjects
            for j, img_obj in enumerate(batch):
                img_obj.embedding = embeddings[j]
                
        return task
