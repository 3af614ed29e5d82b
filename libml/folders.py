"""Folders of image files: listing PNG/JPEG files and class sub-folders, in a stable order."""

import os

from libml.utils import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def image_files(folder):
    """Sorted PNG/JPEG files below `folder` (recursive, hidden entries skipped)."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        found.extend(os.path.join(parent, f) for f in sorted(files)
                     if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS))
    return found


def sub_folders(folder):
    """Sorted names of the (non-hidden) sub-folders of `folder`; [] when it is not a folder."""
    if not os.path.isdir(folder):
        return []
    return sorted(d for d in os.listdir(folder)
                  if not d.startswith('.') and os.path.isdir(os.path.join(folder, d)))


def class_folders(folder, flag):
    """Sorted names of the class sub-folders of `folder`."""
    if not folder or not os.path.isdir(folder):
        raise UserError('--%s %s: no such folder' % (flag, folder))
    names = sub_folders(folder)
    if not names:
        raise UserError('--%s %s: no class sub-folders (expected one folder of images per '
                        'class)' % (flag, folder))
    return names


def labeled_files(folder, classes):
    """(files, labels) of the class sub-folders, class index = position in `classes`."""
    files, labels = [], []
    for label, name in enumerate(classes):
        found = image_files(os.path.join(folder, name))
        if not found:
            raise UserError('%s: no PNG or JPEG images in this class folder'
                            % os.path.join(folder, name))
        files += found
        labels += [label] * len(found)
    return files, labels
