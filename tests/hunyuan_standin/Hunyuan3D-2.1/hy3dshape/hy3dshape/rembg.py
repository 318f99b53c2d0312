from standin_mesh import remove_background


class BackgroundRemover:
    def __call__(self, image):
        return remove_background(image)
