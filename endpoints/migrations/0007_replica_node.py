from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("endpoints", "0006_serving_targets"),
    ]

    operations = [
        migrations.AddField(
            model_name="replica",
            name="node",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
    ]
